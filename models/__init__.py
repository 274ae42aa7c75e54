"""Model registry: --model name -> AnomalyMethod, and rebuilding a trained one from its folder."""
import os

from adkit.errors import UserError

MODEL_NAMES = ("rd4ad", "efficientad_s", "efficientad_m")
TRAIN_CONFIG_FILE = "train_config.json"
# Options that may differ between training and later use; everything else (architecture,
# image size, backbone, ...) is taken from the training run so the same network is rebuilt.
RUNTIME_KEYS = ("mode", "data_dir", "cls", "output_dir", "device", "cpu_threads",
                "eval_batch_size", "img_path", "threshold", "threshold_policy", "save_format",
                "resume", "skip_bad_images")


def build_method(cfg):
    """A fresh (untrained) method (models are imported lazily: each pulls in Paddle)."""
    name = cfg["model"]
    if name == "rd4ad":
        from .rd4ad import RD4ADMethod
        return RD4ADMethod(cfg)
    if name in ("efficientad_s", "efficientad_m"):
        from .efficientad import EfficientADMethod
        return EfficientADMethod(cfg)
    raise UserError(f"--model {name}: unknown (choose {', '.join(MODEL_NAMES)})")


def save_training_config(cfg, ckpt_dir):
    from adkit.io_utils import write_json

    write_json(os.path.join(ckpt_dir, TRAIN_CONFIG_FILE),
               {k: v for k, v in cfg.items() if k not in RUNTIME_KEYS})


def load_trained(ckpt_dir, runtime_cfg=None, expected_model=None):
    """(cfg, method) for the model trained in ``ckpt_dir``; ``runtime_cfg`` supplies RUNTIME_KEYS."""
    from adkit.io_utils import read_json

    path = os.path.join(ckpt_dir, TRAIN_CONFIG_FILE)
    if not os.path.isfile(path):
        what = expected_model or "model"
        raise UserError(f"{ckpt_dir}: no trained {what} here (missing {TRAIN_CONFIG_FILE}); "
                        "run main.py --mode train first")
    cfg = read_json(path)
    if expected_model and cfg.get("model") != expected_model:
        raise UserError(f"{path}: checkpoint is for --model {cfg.get('model')}, not {expected_model}")
    for key in RUNTIME_KEYS:
        if runtime_cfg and key in runtime_cfg:
            cfg[key] = runtime_cfg[key]
    method = build_method(cfg)
    method.load(ckpt_dir)
    return cfg, method
