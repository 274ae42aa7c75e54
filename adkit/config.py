"""Command line + per-model YAML defaults -> one flat, validated config dict.

Precedence: configs/<model>.yaml < --config FILE < explicit command-line flags.
"""
import argparse
import os
import sys

import yaml

from .errors import UserError
from .outputs import SAVE_FORMAT_HELP, SAVE_FORMATS
from .thresholds import DEFAULT_POLICY, POLICY_HELP, parse_policy

MODELS = ("rd4ad", "efficientad_s", "efficientad_m")
MODES = ("train", "eval", "infer", "distill")
# --mode distill reads its own defaults (distill_<key>) for these generic options.
DISTILL_KEYS = ("steps", "batch_size", "lr", "backbone", "backbone_weights")
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")

# name: (type, help). Defaults come from the model's YAML, so argparse defaults are None.
OPTIONS = {
    "data_dir": (str, "dataset root in MVTec AD layout (distill: any folder of images)"),
    "cls": (str, "category folder under --data_dir, or 'all' for every category"),
    "output_dir": (str, "where checkpoints, metrics and pictures go"),
    "steps": (int, "optimisation steps (EfficientAD default 70000; RD4AD: overrides --epochs)"),
    "epochs": (int, "RD4AD: passes over the training images when --steps is not given"),
    "batch_size": (int, "training batch size (paper: 16 RD4AD, 1 EfficientAD)"),
    "eval_batch_size": (int, "batch size for eval/infer forward passes"),
    "lr": (float, "learning rate"),
    "image_size": (int, "square model input size in pixels"),
    "device": (str, "cpu or gpu"),
    "cpu_threads": (int, "CPU threads for Paddle (set before Paddle loads)"),
    "seed": (int, "random seed (data order, init, augmentation)"),
    "img_path": (str, "infer: an image file, or a folder of images (subfolders too; outputs "
                      "mirror the tree)"),
    "backbone": (str, "RD4AD encoder: wide_resnet50_2, resnet18, wide_resnet101_2, "
                      "efficientnet_lite0, efficientnet_lite2"),
    "backbone_weights": (str, "encoder weights: a .pdparams/.pth path, 'none' for random "
                              "init, or leave unset for automatic"),
    "teacher_weights": (str, "EfficientAD teacher: .pdparams or torch .pth (nelson1425 or "
                             "anomalib layout)"),
    "penalty_dir": (str, "EfficientAD: folder of generic images for the ImageNet penalty"),
    "save_interval": (int, "write a checkpoint every N steps"),
    "log_interval": (int, "log the loss every N steps"),
    "val_ratio": (float, "fraction of train/good held out as validation (never the test set)"),
    "crop_size": (int, "distill: train the PDN on random crops of this size (pixels)"),
    "threshold": (float, "a score threshold for the labels, overriding --threshold_policy "
                         "(same as --threshold_policy manual:VALUE)"),
    "threshold_policy": (str, "how the pass/fail threshold is chosen: " + POLICY_HELP +
                              f"; train stores it with the model (default {DEFAULT_POLICY}), "
                              "eval/infer use the stored one unless given"),
    "save_format": (str, "eval/infer: " + SAVE_FORMAT_HELP),
}
DEFAULTS = {"data_dir": "sample_data", "cls": "all", "output_dir": "output", "device": "cpu",
            "cpu_threads": 2, "img_path": None, "threshold": None, "threshold_policy": None,
            "save_format": "npy", "resume": False, "skip_bad_images": False}


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's layout (usage examples) and shows real defaults, not 'None'."""

    def _get_help_string(self, action):
        # identity, not ==: a default of 0 is a real default (0 == False)
        if any(action.default is v for v in (None, False, argparse.SUPPRESS)) or "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        # argparse prints usage plus the message; one line naming the problem is kinder.
        raise UserError(f"{message} (see --help)")


def build_parser():
    parser = OneLineParser(
        description="Train, evaluate and run industrial anomaly detectors (EfficientAD, RD4AD).",
        formatter_class=argparse.HelpFormatter)  # defaults are written into the help texts
    parser.add_argument("--model", required=True, choices=MODELS, help="which method")
    parser.add_argument("--mode", required=True, choices=MODES, help="what to do")
    parser.add_argument("--config", help="a YAML file overriding configs/<model>.yaml")
    parser.add_argument("--resume", action="store_true",
                        help="continue training from the last checkpoint in the output folder")
    parser.add_argument("--skip_bad_images", action="store_true",
                        help="eval/infer: log unreadable images and go on without them (listed "
                             "as skipped in df_test.csv) instead of stopping")
    for name, (kind, text) in OPTIONS.items():
        hint = f" (default: {DEFAULTS[name]})" if DEFAULTS.get(name) is not None else ""
        parser.add_argument(f"--{name}", type=kind, default=None, help=text + hint)
    return parser


def _read_yaml(path):
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise UserError(f"--config {path}: file not found") from None
    except yaml.YAMLError as err:
        raise UserError(f"{path}: invalid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of option: value")
    return data


def model_defaults(model):
    return _read_yaml(os.path.join(CONFIG_DIR, f"{model}.yaml"))


def resolve_config(argv=None):
    """Parse ``argv`` and return the merged, validated config dict."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    cfg = dict(DEFAULTS)
    cfg.update(model_defaults(args.model))
    if args.mode == "distill":
        if args.model == "rd4ad":
            raise UserError("--mode distill pretrains an EfficientAD teacher: use --model "
                            "efficientad_s or efficientad_m")
        cfg.update({key: cfg[f"distill_{key}"] for key in DISTILL_KEYS if f"distill_{key}" in cfg})
    if args.config:
        overrides = _read_yaml(args.config)
        unknown = sorted(set(overrides) - set(cfg) - set(OPTIONS))
        if unknown:
            raise UserError(f"{args.config}: unknown option(s) {', '.join(unknown)}")
        cfg.update(overrides)
    cfg.update({k: v for k, v in vars(args).items() if v is not None and k != "config"})
    _validate(cfg)
    return cfg


def _validate(cfg):
    if cfg["device"] not in ("cpu", "gpu"):
        raise UserError(f"--device must be cpu or gpu, got {cfg['device']!r}")
    for name in ("batch_size", "eval_batch_size", "image_size", "cpu_threads", "save_interval",
                 "log_interval"):
        if int(cfg[name]) < 1:
            raise UserError(f"--{name} must be >= 1, got {cfg[name]}")
    for name in ("steps", "epochs"):
        if cfg.get(name) is not None and int(cfg[name]) < 1:
            raise UserError(f"--{name} must be >= 1, got {cfg[name]}")
    if cfg["image_size"] % 32:
        raise UserError(f"--image_size must be a multiple of 32, got {cfg['image_size']}")
    if cfg["lr"] <= 0:
        raise UserError(f"--lr must be > 0, got {cfg['lr']}")
    if cfg.get("threshold_policy") is not None:
        parse_policy(cfg["threshold_policy"])
    if cfg["save_format"] not in SAVE_FORMATS:
        raise UserError(f"--save_format must be one of {', '.join(SAVE_FORMATS)}, got {cfg['save_format']!r}")
    if cfg["mode"] == "infer" and not cfg.get("img_path"):
        raise UserError("--mode infer needs --img_path FILE_OR_DIR")
