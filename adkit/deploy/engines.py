"""Engines behind adkit.Predictor: Paddle Inference (CPU/GPU/TensorRT), ONNX Runtime, and the
dygraph net of a training checkpoint.

Each engine maps a float32 [N,3,H,W] batch to (maps [N,1,H,W], scores [N]); they do no model math.
An ``image_size`` here is anything adkit.core.image_io.image_hw reads: a side, "HxW" or [H, W].
"""
import os

from adkit.core.compat import use_old_ir
from adkit.core.errors import UserError
from adkit.core.image_io import image_hw
from adkit.core.static_graph import GraphRunner, layer_on_cpu, use_cpu


class PaddleEngine:
    """``quantized``: the folder holds an int8 export (export_model.py --quantize int8); None
    reads it from the folder's deploy_config.json. int8 runs on CPU with oneDNN's int8 kernels,
    which Paddle 3.3 applies on the old program IR only (adkit/deploy/quantize.py)."""

    def __init__(self, model_dir, device="cpu", cpu_threads=2, enable_mkldnn=True,
                 use_tensorrt=False, precision="fp32", max_batch_size=1, image_size=256,
                 gpu_mem_mb=500, gpu_id=0, quantized=None, int8_ops=None):
        from paddle import inference

        from adkit.deploy.exported import model_files, stored_int8_ops, stored_precision

        graph, params = model_files(model_dir)
        if quantized is None:
            quantized = stored_precision(model_dir) == "int8"
        if quantized and not int8_ops:  # the convolutions unless the export says more
            int8_ops = stored_int8_ops(model_dir) or ("conv2d", "depthwise_conv2d", "fused_conv2d")
        config = inference.Config(graph, params)
        if quantized and (device != "cpu" or use_tensorrt or precision != "fp32"):
            raise UserError(f"{model_dir} is an int8 export: it runs on --device cpu with oneDNN "
                            "(drop --device gpu, --use_tensorrt, --precision), or export without --quantize")
        if device == "gpu":
            import paddle

            if not paddle.device.is_compiled_with_cuda():
                raise UserError("--device gpu: this Paddle build has no CUDA; install paddlepaddle-gpu "
                                "or use --device cpu")
            configure_gpu(config, gpu_mem_mb, gpu_id, precision, use_tensorrt, max_batch_size, image_size)
        else:
            if use_tensorrt:
                raise UserError("--use_tensorrt true needs --device gpu")
            if precision != "fp32":
                raise UserError(f"--precision {precision} needs --device gpu (CPU runs fp32)")
            if quantized:
                use_old_ir(config)  # oneDNN's int8 passes exist for the old IR only
            # without oneDNN an int8 export runs its quantize/dequantize pairs in fp32 kernels
            use_cpu(config, cpu_threads, enable_mkldnn)
            if enable_mkldnn and quantized:
                # only the ops that were quantised: left to itself oneDNN also quantises ops
                # whose scales it propagates (matmuls, adds), and PatchCore's map came out flat
                config.enable_mkldnn_int8(set(int8_ops))
        self.quantized = quantized
        self.graph = GraphRunner(config, quiet_stderr=quantized)
        self.config = config

    def run(self, batch):
        amap, score = self.graph.run_outputs(batch)
        return amap, score.reshape(-1)


def configure_gpu(config, gpu_mem_mb, gpu_id, precision, use_tensorrt, max_batch_size, image_size):
    """GPU (and TensorRT) settings of a Paddle Inference ``Config``, by keyword where the binding
    names its arguments, so tests/test_paddle_api.py can check every call against the installed
    Paddle (2.6 and 3.x name them alike) without a GPU."""
    from paddle import inference

    from adkit.core.static_graph import INPUT_NAME

    half, full = inference.PrecisionType.Half, inference.PrecisionType.Float32
    config.enable_use_gpu(memory_pool_init_size_mb=gpu_mem_mb, device_id=gpu_id,
                          precision_mode=half if precision == "fp16" and not use_tensorrt else full)
    if use_tensorrt:
        config.enable_tensorrt_engine(
            workspace_size=1 << 30, max_batch_size=max_batch_size, min_subgraph_size=3,
            precision_mode=half if precision == "fp16" else full, use_static=False, use_calib_mode=False)
        shape = [3, *image_hw(image_size)]
        config.set_trt_dynamic_shape_info(min_input_shape={INPUT_NAME: [1] + shape},
                                          max_input_shape={INPUT_NAME: [max_batch_size] + shape},
                                          optim_input_shape={INPUT_NAME: [max_batch_size] + shape})


class OnnxEngine:
    def __init__(self, model_dir, device="cpu", cpu_threads=2, use_tensorrt=False, precision="fp32",
                 **_unused):
        if use_tensorrt or precision != "fp32":
            raise UserError("--backend onnxruntime runs the fp32 graph only: drop --use_tensorrt "
                            "and --precision fp16, or use --backend paddle")
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError("--backend onnxruntime needs: pip install onnxruntime") from None
        path = os.path.join(model_dir, "model.onnx")
        if not os.path.isfile(path):
            raise UserError(f"{path}: missing; export with export_model.py --to_onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = cpu_threads
        options.inter_op_num_threads = 1
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "gpu" else ["CPUExecutionProvider"]
        self.config = {"runtime_device": device, "ir_optim": True, "enable_tensorrt": False,
                       "enable_mkldnn": False, "cpu_math_library_num_threads": cpu_threads}
        self.session = ort.InferenceSession(path, options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name

    def run(self, batch):
        amap, score = self.session.run(None, {self.input_name: batch})
        return amap, score.reshape(-1)


class DygraphEngine:
    """A trained method's inference net (``AnomalyMethod.inference_net``) in dygraph."""

    def __init__(self, net):
        self.net = net
        self.config = {"runtime_device": "dygraph", "ir_optim": False, "enable_tensorrt": False,
                       "enable_mkldnn": False}

    def run(self, batch):
        import paddle

        with paddle.no_grad():
            amap, score = self.net(paddle.to_tensor(batch))
        return amap.numpy(), score.numpy().reshape(-1)


class GraphEngine:
    """A trained method's inference net run as the exported model runs: its static graph in
    Paddle Inference with oneDNN on the CPU (adkit.core.static_graph, the files export_model.py
    writes): eval and calibration score as infer does, at the graph's speed (oneDNN fuses what
    dygraph runs op by op: EfficientAD-S 2.2x, PatchCore's nearest-neighbour blocks 2.6x), which
    matters most for tiled photos."""

    def __init__(self, net, image_size, cpu_threads=2):
        self.graph = layer_on_cpu(net, image_size, cpu_threads)
        self.config = self.graph.config

    def run(self, batch):
        amap, score = self.graph.run_outputs(batch)
        return amap, score.reshape(-1)


def scoring_engine(method, cfg):
    """The engine train's calibration, eval and a checkpoint folder's Predictor score with: on
    the CPU the exported graph (GraphEngine), on a GPU the dygraph net (there dygraph's
    reductions are not the bottleneck, and each process keeps its own device). One choice for
    all three."""
    net = method.inference_net()
    if (cfg.get("device") or "cpu") == "cpu":
        return GraphEngine(net, cfg["image_size"], int(cfg.get("cpu_threads") or 2))
    return DygraphEngine(net)


def create_engine(backend, model_dir, **options):
    if backend == "paddle":
        return PaddleEngine(model_dir, **options)
    if backend == "onnxruntime":
        return OnnxEngine(model_dir, **options)
    raise UserError(f"--backend must be paddle or onnxruntime, got {backend!r}")
