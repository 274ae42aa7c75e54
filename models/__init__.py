"""Methods by name (models/registry.py) and rebuilding a trained one from its folder."""
import os

from adkit.config import RUNTIME_OPTIONS
from adkit.errors import UserError

TRAIN_CONFIG_FILE = "train_config.json"


def build_method(cfg):
    """A fresh (untrained) method (its module is imported now: it pulls in Paddle)."""
    from .registry import spec_for

    return spec_for(cfg["model"]).build(cfg)


def save_training_config(cfg, ckpt_dir):
    from adkit.io_utils import write_json

    write_json(os.path.join(ckpt_dir, TRAIN_CONFIG_FILE),
               {k: v for k, v in cfg.items() if k not in RUNTIME_OPTIONS})


def load_trained(ckpt_dir, runtime_cfg=None, expected_model=None):
    """(cfg, method) for the model trained in ``ckpt_dir``; ``runtime_cfg`` supplies RUNTIME_OPTIONS."""
    from adkit.io_utils import read_json

    path = os.path.join(ckpt_dir, TRAIN_CONFIG_FILE)
    if not os.path.isfile(path):
        what = expected_model or "model"
        raise UserError(f"{ckpt_dir}: no trained {what} here (missing {TRAIN_CONFIG_FILE}); "
                        "run main.py --mode train first")
    cfg = read_json(path)
    if expected_model and cfg.get("model") != expected_model:
        raise UserError(f"{path}: checkpoint is for --model {cfg.get('model')}, not {expected_model}")
    for key in RUNTIME_OPTIONS:
        if runtime_cfg and key in runtime_cfg:
            cfg[key] = runtime_cfg[key]
    method = build_method(cfg)
    method.load(ckpt_dir)
    return cfg, method
