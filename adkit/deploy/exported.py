"""What export_model.py writes beside the graph, and how infer.py finds the files again."""
import os

from adkit.core.errors import UserError
from adkit.core.io_utils import read_json
from adkit.core.static_graph import MODEL_PREFIX, graph_files
from adkit.evaluate.calibration import DEPLOY_CONFIG

INPUT_DESCRIPTION = "float32 [N,3,H,W] RGB in [0,1] (pixel/255) at the model size, no other normalisation"


def model_files(model_dir):
    """(model file, params file) for Paddle 3 PIR (.json) or Paddle 2.x (.pdmodel) exports. A
    .json graph on Paddle 2.6, which cannot read it, is one error line naming the Paddle that
    wrote it (deploy_config.json records it)."""
    from adkit.core.compat import reads_pir_graphs

    if not os.path.isdir(model_dir):
        raise UserError(f"--model_dir {model_dir}: folder not found")
    found = graph_files(model_dir)
    if found:
        if found[0].endswith(".json") and not reads_pir_graphs():
            import paddle

            writer = _stored(model_dir).get("paddle_version") or "3.x"
            raise UserError(f"--model_dir {model_dir}: {MODEL_PREFIX}.json is a Paddle {writer} (PIR) graph, "
                            f"which Paddle {paddle.__version__} cannot read: export again with this "
                            "Paddle, or install paddlepaddle>=3 to run it")
        return found
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
