"""What export_model.py writes beside the graph, and how infer.py finds the files again."""
import os

from adkit.core.errors import UserError
from adkit.core.image_io import image_hw
from adkit.core.io_utils import read_json
from adkit.evaluate.calibration import DEPLOY_CONFIG

MODEL_PREFIX = "inference"
INPUT_NAME = "image"
INPUT_DESCRIPTION = "float32 [N,3,H,W] RGB in [0,1] (pixel/255) at the model size, no other normalisation"


def save_inference_graph(net, image_size, folder):
    """The inference net (an ``AnomalyMethod.inference_net``) as a static graph in ``folder``:
    ``inference.json`` (Paddle 3) or ``inference.pdmodel`` (2.6) + ``inference.pdiparams``, input
    [None, 3, H, W] (``image_size``: a side or (H, W), see image_hw). export_model.py and
    adkit.deploy.engines.GraphEngine both write it here."""
    import warnings

    import paddle

    net.eval()  # Layer.eval() returns None on Paddle 2.6
    height, width = image_hw(image_size)
    spec = [paddle.static.InputSpec([None, 3, height, width], "float32", INPUT_NAME)]
    static_net = paddle.jit.to_static(net, input_spec=spec, full_graph=True)
    with warnings.catch_warnings():  # Paddle 3's tracer warns of a `.place` it reads itself
        warnings.filterwarnings("ignore", message="Tensor do not have 'place' interface")
        paddle.jit.save(static_net, os.path.join(folder, MODEL_PREFIX))
    # Paddle 2.6 adds a .pdiparams.info for paddle.jit.load, which nothing here uses: the same
    # files from both Paddles
    info = os.path.join(folder, MODEL_PREFIX + ".pdiparams.info")
    if os.path.isfile(info):
        os.remove(info)


def model_files(model_dir):
    """(model file, params file) for Paddle 3 PIR (.json) or Paddle 2.x (.pdmodel) exports. A
    .json graph on Paddle 2.6, which cannot read it, is one error line naming the Paddle that
    wrote it (deploy_config.json records it)."""
    from adkit.core.compat import reads_pir_graphs

    if not os.path.isdir(model_dir):
        raise UserError(f"--model_dir {model_dir}: folder not found")
    params = os.path.join(model_dir, f"{MODEL_PREFIX}.pdiparams")
    found = [os.path.join(model_dir, MODEL_PREFIX + ext) for ext in (".pdmodel", ".json")
             if os.path.isfile(os.path.join(model_dir, MODEL_PREFIX + ext))]
    if found and os.path.isfile(params):
        if found[0].endswith(".json") and not reads_pir_graphs():
            import paddle

            writer = _stored(model_dir).get("paddle_version") or "3.x"
            raise UserError(f"--model_dir {model_dir}: {MODEL_PREFIX}.json is a Paddle {writer} (PIR) graph, "
                            f"which Paddle {paddle.__version__} cannot read: export again with this "
                            "Paddle, or install paddlepaddle>=3 to run it")
        return found[0], params
    raise UserError(f"--model_dir {model_dir}: expected {MODEL_PREFIX}.json or {MODEL_PREFIX}.pdmodel "
                    f"with {MODEL_PREFIX}.pdiparams (write them with export_model.py)")


def _stored(model_dir):
    """deploy_config.json as a dict ({} without one)."""
    path = os.path.join(model_dir, DEPLOY_CONFIG)
    return read_json(path) if os.path.isfile(path) else {}


def read_deploy_config(model_dir):
    if not os.path.isdir(model_dir):
        raise UserError(f"--model_dir {model_dir}: folder not found")
    path = os.path.join(model_dir, DEPLOY_CONFIG)
    if not os.path.isfile(path):
        raise UserError(f"{path}: missing (export_model.py writes it beside the model)")
    cfg = read_json(path)
    for key in ("model", "image_size"):
        if key not in cfg:
            raise UserError(f"{path}: missing key '{key}'")
    return cfg


def stored_precision(model_dir):
    """"fp32" or "int8" (export_model.py --quantize int8), from deploy_config.json."""
    return _stored(model_dir).get("precision", "fp32")


def stored_int8_ops(model_dir):
    """The op types oneDNN runs in int8 in an int8 export (its deploy_config.json)."""
    return list((_stored(model_dir).get("quantization") or {}).get("int8_ops", []))
