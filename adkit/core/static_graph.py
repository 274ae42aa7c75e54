"""A Paddle layer as a static graph run by Paddle Inference: the files (``save_inference_graph``),
and a predictor over them (``GraphRunner``). Below both of its users: the deploy layer's engines
(export_model.py's folders, eval's and calibration's scoring) and training's frozen networks
(adkit.train.frozen), which run their teacher or encoder this way on the CPU."""
import os
import tempfile
import warnings

from adkit.core.image_io import image_hw
from adkit.core.runtime import framework_stderr_silenced, framework_stdout_silenced, restore_cpu_threads

MODEL_PREFIX = "inference"
INPUT_NAME = "image"
GRAPH_EXTENSIONS = (".pdmodel", ".json")  # Paddle 2.6's program, Paddle 3's PIR graph


def save_inference_graph(net, image_size, folder):
    """``net`` (a layer taking [N, 3, H, W] float32) as a static graph in ``folder``:
    ``inference.json`` (Paddle 3) or ``inference.pdmodel`` (2.6) + ``inference.pdiparams``, input
    [None, 3, H, W] (``image_size``: a side or (H, W), see image_hw)."""
    import paddle

    net.eval()  # Layer.eval() returns None on Paddle 2.6
    height, width = image_hw(image_size)
    spec = [paddle.static.InputSpec([None, 3, height, width], "float32", INPUT_NAME)]
    # the code to_static generates adds a filter to the process's warnings: the host's stay as they were
    with warnings.catch_warnings():
        static_net = paddle.jit.to_static(net, input_spec=spec, full_graph=True)
        paddle.jit.save(static_net, os.path.join(folder, MODEL_PREFIX))
    # Paddle 2.6 adds a .pdiparams.info for paddle.jit.load, which nothing here uses: the same
    # files from both Paddles
    info = os.path.join(folder, MODEL_PREFIX + ".pdiparams.info")
    if os.path.isfile(info):
        os.remove(info)


def graph_files(folder):
    """(graph file, params file) in ``folder``, or None when the pair is not there."""
    params = os.path.join(folder, MODEL_PREFIX + ".pdiparams")
    graphs = [os.path.join(folder, MODEL_PREFIX + ext) for ext in GRAPH_EXTENSIONS]
    graphs = [path for path in graphs if os.path.isfile(path)]
    return (graphs[0], params) if graphs and os.path.isfile(params) else None


def use_cpu(config, cpu_threads, onednn=True):
    """A Paddle Inference ``Config`` set to run on ``cpu_threads`` CPU threads, with oneDNN's
    kernels (it fuses each conv with its BN and activation) unless ``onednn`` is False."""
    config.disable_gpu()
    config.set_cpu_math_library_num_threads(cpu_threads)
    if onednn:
        config.enable_mkldnn()
    else:
        config.disable_mkldnn()


class GraphRunner:
    """A Paddle Inference predictor made from ``config``: ``run_outputs(batch)`` gives every
    output of the graph for a float32 batch. Paddle's C++ notes on stdout never reach the
    results (nor oneDNN's int8 progress on stderr, when ``quiet_stderr``); the thread count a
    run lowers is given back to dygraph after creating it and after each run."""

    def __init__(self, config, quiet_stderr=False):
        from paddle import inference

        config.disable_glog_info()
        config.switch_ir_optim(True)
        self.config, self.quiet_stderr = config, quiet_stderr
        with framework_stdout_silenced(), framework_stderr_silenced(quiet_stderr):
            self.predictor = inference.create_predictor(config)
        restore_cpu_threads()
        self.input = self.predictor.get_input_handle(self.predictor.get_input_names()[0])
        self.outputs = [self.predictor.get_output_handle(n) for n in self.predictor.get_output_names()]

    def run_outputs(self, batch):
        self.input.reshape(list(batch.shape))
        self.input.copy_from_cpu(batch)
        with framework_stdout_silenced(), framework_stderr_silenced(self.quiet_stderr):
            self.predictor.run()
        restore_cpu_threads()
        return [out.copy_to_cpu() for out in self.outputs]


def layer_on_cpu(net, image_size, cpu_threads=2):
    """A GraphRunner of ``net`` as a static graph on the CPU with oneDNN, written to a temporary
    folder that is gone when this returns (Paddle Inference holds the graph in memory)."""
    from paddle import inference

    with tempfile.TemporaryDirectory(prefix="adkit_graph_") as folder:
        with framework_stdout_silenced():
            save_inference_graph(net, image_size, folder)
        config = inference.Config(*graph_files(folder))
        use_cpu(config, cpu_threads)
        return GraphRunner(config)
