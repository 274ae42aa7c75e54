"""What export_model.py writes beside the graph, and how infer.py finds the files again."""
import os

from .errors import UserError
from .io_utils import read_json

MODEL_PREFIX = "inference"
DEPLOY_CONFIG = "deploy_config.json"
INPUT_NAME = "image"
INPUT_DESCRIPTION = "float32 [N,3,H,W] RGB in [0,1] (pixel/255) at the model size, no other normalisation"


def model_files(model_dir):
    """(model file, params file) for Paddle 3 PIR (.json) or Paddle 2.x (.pdmodel) exports."""
    if not os.path.isdir(model_dir):
        raise UserError(f"--model_dir {model_dir}: folder not found")
    params = os.path.join(model_dir, f"{MODEL_PREFIX}.pdiparams")
    for ext in (".json", ".pdmodel"):
        graph = os.path.join(model_dir, MODEL_PREFIX + ext)
        if os.path.isfile(graph) and os.path.isfile(params):
            return graph, params
    raise UserError(f"--model_dir {model_dir}: expected {MODEL_PREFIX}.json or {MODEL_PREFIX}.pdmodel "
                    f"with {MODEL_PREFIX}.pdiparams (write them with export_model.py)")


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
    path = os.path.join(model_dir, DEPLOY_CONFIG)
    return read_json(path).get("precision", "fp32") if os.path.isfile(path) else "fp32"


def stored_int8_ops(model_dir):
    """The op types oneDNN runs in int8 in an int8 export (its deploy_config.json)."""
    path = os.path.join(model_dir, DEPLOY_CONFIG)
    quantization = read_json(path).get("quantization") if os.path.isfile(path) else None
    return list((quantization or {}).get("int8_ops", []))
