"""Command line + per-model YAML defaults -> one flat, validated config dict.

Precedence: configs/<model>.yaml < --config FILE < explicit command-line flags.
"""
import argparse
import os
import sys

import yaml

from adkit.core.errors import UserError
from adkit.core.image_io import image_hw, size_text
from adkit.core.io_utils import shipped_folder
from adkit.evaluate.evaluation import EVAL_RESOLUTION_HELP, EVAL_RESOLUTIONS
from adkit.outputs.folders import SAVE_FORMAT_HELP, SAVE_FORMATS
from adkit.evaluate.thresholds import DEFAULT_POLICY, POLICY_HELP, parse_policy

BASE_MODES = ("train", "eval", "infer")
CPU_CONV_CHOICES = ("onednn", "paddle")
AMP_CHOICES = ("fp16", "bf16")  # adkit.train.trainer.AMP_MODES (config reads no Paddle module)
DATA_FORMATS = ("mvtec", "loco", "visa", "folder")  # the layouts datasets.open_category reads


def _size(value):
    """N or HxW (or a YAML [height, width]) -> [height, width]."""
    return list(image_hw(value))


_size.__name__ = "N or HxW"  # how argparse and the YAML check name the expected value

# Options every method takes: name: (type, help). A method's own options come from its typed
# settings in the registry (models/<method>/spec.py). Defaults come from the model's YAML, so
# argparse defaults are None.
OPTIONS = {
    "data_dir": (str, "dataset root (--data_format mvtec/loco: category folders; visa: the folder "
                      "holding split_csv/; distill: any folder of images)"),
    "data_format": (str, "dataset layout: " + ", ".join(DATA_FORMATS) + " (folder: your own "
                         "folders, given by --train_dir, --test_good_dir, --test_defect_dir, --mask_dir)"),
    "train_dir": (str, "--data_format folder: good images for training (subfolders too)"),
    "test_good_dir": (str, "--data_format folder: good test images"),
    "test_defect_dir": (str, "--data_format folder: defective test images (a subfolder's name is "
                             "their defect type)"),
    "mask_dir": (str, "--data_format folder: masks of the defective images, matched by relative "
                      "path and name (optionally ending in _mask)"),
    "eval_resolution": (str, "eval: " + EVAL_RESOLUTION_HELP),
    "cls": (str, "category folder under --data_dir, or 'all' for every category"),
    "output_dir": (str, "where checkpoints, metrics and pictures go"),
    "steps": (int, "optimisation steps (overrides --epochs; default: the method's paper schedule)"),
    "epochs": (int, "passes over the training images when --steps is not given"),
    "batch_size": (int, "training batch size (default: the method's paper value)"),
    "eval_batch_size": (int, "batch size for eval/infer forward passes"),
    "lr": (float, "learning rate"),
    "image_size": (_size,
                   "model input size in pixels: N (square) or HxW, e.g. 384x512 for 4:3 photos; "
                   "images are resized to it (with --tile_size: each tile is)"),
    "tile_size": (_size,
                  "cut each photo into tiles of N (or HxW) pixels of the photo itself, each "
                  "resized to --image_size: small defects keep their pixels; train, eval, "
                  "export, infer and serve all use the tiles (default: no tiles, the whole "
                  "photo resized)"),
    "tile_stride": (_size,
                    "with --tile_size: pixels between tile origins (default: 3/4 of the tile, "
                    "so tiles overlap and a defect on a seam is seen whole)"),
    "max_train_tiles": (int, "with --tile_size: at most this many training tiles (a seeded "
                             "sample when the photos hold more)"),
    "device": (str, "cpu or gpu"),
    "amp": (str, "train/distill: mixed precision on GPU, " + " or ".join(AMP_CHOICES) + " (fp16 "
                 "with loss scaling; bf16 needs no scaling, Ampere or newer); off by default. "
                 "Several GPUs: python -m paddle.distributed.launch --devices 0,1 main.py ..."),
    "cpu_threads": (int, "CPU threads for Paddle (set before Paddle loads)"),
    "cpu_conv": (str, "train on the CPU: " + " or ".join(CPU_CONV_CHOICES) + "; onednn runs the "
                      "trained convolutions of RD4AD and EfficientAD with the oneDNN library inside "
                      "Paddle's wheel (faster; the same results to float rounding), paddle with "
                      "Paddle's own kernels"),
    "seed": (int, "random seed (data order, init, augmentation)"),
    "img_path": (str, "infer: an image file, or a folder of images (subfolders too; outputs "
                      "mirror the tree)"),
    "save_interval": (int, "write a checkpoint every N steps"),
    "log_interval": (int, "log the loss every N steps"),
    "val_ratio": (float, "fraction of train/good held out as validation (never the test set); "
                         "at least 3 images when train/good has 6 or more"),
    "threshold": (float, "a score threshold for the labels, overriding --threshold_policy "
                         "(same as --threshold_policy manual:VALUE)"),
    "threshold_policy": (str, "how the pass/fail threshold is chosen: " + POLICY_HELP +
                              f"; train stores it with the model (default {DEFAULT_POLICY}), "
                              "eval/infer use the stored one unless given"),
    "save_format": (str, "eval/infer: " + SAVE_FORMAT_HELP),
    "log_dir": (str, "train: where train_log.csv (and VisualDL scalars, if visualdl is "
                     "installed) go (default: the checkpoint folder)"),
}
DEFAULTS = {"data_dir": "sample_data", "data_format": "mvtec", "train_dir": None, "test_good_dir": None,
            "test_defect_dir": None, "mask_dir": None, "eval_resolution": "model", "cls": "all", "output_dir": "output", "device": "cpu",
            "amp": None, "cpu_threads": 2, "cpu_conv": "onednn", "img_path": None, "threshold": None, "threshold_policy": None,
            "save_format": "npy", "resume": False, "skip_bad_images": False, "verbose": False,
            "log_dir": None, "tile_size": None, "tile_stride": None,
            "max_train_tiles": 2000}


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's layout (usage examples) and shows real defaults, not 'None'."""

    def _get_help_string(self, action):
        # identity, not ==: a default of 0 is a real default (0 == False)
        no_default = any(action.default is v for v in (None, False, argparse.SUPPRESS))
        if no_default or "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        # argparse prints usage plus the message; one line naming the problem is kinder.
        raise UserError(f"{message}{self._suggestions(message)} (see --help)")

    def _suggestions(self, message):
        """" (did you mean --coreset_ratio?)" for the misspelt flags of an "unrecognized
        arguments" message."""
        if not message.startswith("unrecognized arguments:"):
            return ""
        flags = [token.split("=")[0] for token in message.split(":", 1)[1].split() if token.startswith("--")]
        return did_you_mean(flags, [o for action in self._actions for o in action.option_strings])


def did_you_mean(names, known):
    """" (did you mean X?)" naming the closest of ``known`` to each of ``names`` that has one."""
    import difflib

    close = [match[0] for name in names for match in [difflib.get_close_matches(name, known, 1, 0.75)] if match]
    return f" (did you mean {', '.join(close)}?)" if close else ""


def build_parser(model=None):
    """The command line; with ``model`` known, its own options (registry settings) too."""
    from adkit.options import registry

    models = registry.model_names()
    modes = BASE_MODES + tuple(registry.extra_modes())
    parser = OneLineParser(
        description="Train, evaluate and run industrial anomaly detectors. Methods: " + "; ".join(
            f"{name}: {registry.summary_of(name)}" for name in models)
        + ". `--model M --help` also lists M's own options.",
        formatter_class=argparse.HelpFormatter)  # defaults are written into the help texts
    parser.add_argument("--model", required=True, choices=models, help="which method")
    parser.add_argument("--mode", required=True, choices=modes, help="what to do")
    parser.add_argument("--config", help="a YAML file overriding configs/<model>.yaml")
    parser.add_argument("--resume", action="store_true", default=None,  # None: YAML may set it
                        help="continue training from the last checkpoint in the output folder")
    parser.add_argument("--verbose", action="store_true", default=None,  # None: YAML may set it
                        help="show Paddle's own C++ messages (normally silenced)")
    parser.add_argument("--skip_bad_images", action="store_true", default=None,  # None: YAML may set it
                        help="eval/infer: log unreadable images and go on without them (listed "
                             "as skipped in df_test.csv) instead of stopping")
    for name, (kind, text) in OPTIONS.items():
        hint = f" (default: {DEFAULTS[name]})" if DEFAULTS.get(name) is not None else ""
        parser.add_argument(f"--{name}", type=kind, default=None, help=text + hint)
    if model in models:
        group = parser.add_argument_group(f"{model} options")
        for name, field in registry.setting_fields(model).items():
            hint = "" if field.default is None else f" (default: {field.default})"
            group.add_argument(f"--{name}", type=_parser_type(field.type), default=None,
                               help=field.metadata["help"] + hint)
    return parser


def _parser_type(kind):
    return _to_bool if kind in (bool, "bool") else _TYPES.get(kind, kind)


def _to_bool(value):
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise ValueError(value)


_TYPES = {"str": str, "int": int, "float": float}


def _model_in(argv):
    """--model's value before the full parse (the method's options depend on it)."""
    for i, arg in enumerate(argv):
        if arg == "--model" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--model="):
            return arg.split("=", 1)[1]
    return None


class YamlOptions:
    """A YAML file of options: ``values`` {key: value}, and where each key is (``place``)."""

    def __init__(self, path, label=None):
        self.label = label or path  # how messages name the file
        text = self._text(path)
        try:
            self.values = yaml.safe_load(text) or {}
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as err:
            raise UserError(yaml_error_line(self.label, err)) from None
        if not isinstance(self.values, dict):
            raise UserError(f"{self.label}: expected a mapping of option: value")
        self.lines = {key.value: key.start_mark.line + 1 for key, _ in (root.value if root else [])}

    @staticmethod
    def _text(path):
        try:
            with open(path, encoding="utf-8") as f:
                return f.read()
        except FileNotFoundError:
            raise UserError(f"--config {path}: file not found") from None

    def place(self, key):
        """"file.yaml, line 3: key": where a message about ``key``'s value points."""
        return f"{self.label}, line {self.lines[key]}: {key}" if key in self.lines else f"{self.label}: {key}"


def yaml_error_line(label, err):
    """PyYAML's error as one line with the file, line and column: where the construct it could
    not finish starts (a key missing its colon), and where it noticed."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context, context_mark = getattr(err, "context", None), getattr(err, "context_mark", None)
    mark = getattr(err, "problem_mark", None)
    if mark is None:
        return f"{label}: invalid YAML ({problem})"
    where = lambda m: f"line {m.line + 1}, column {m.column + 1}"  # noqa: E731 (marks count from 0)
    if context and context_mark is not None:
        return f"{label}, {where(context_mark)}: invalid YAML: {problem} ({context}; noticed at {where(mark)})"
    return f"{label}, {where(mark)}: invalid YAML: {problem}"


def model_defaults(model):
    return YamlOptions(os.path.join(shipped_folder("configs"), f"{model}.yaml"), f"configs/{model}.yaml").values


def resolve_config(argv=None):
    """Parse ``argv`` and return the merged, validated config dict."""
    from adkit.options import registry

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(_model_in(argv)).parse_args(argv)
    spec = registry.spec_for(args.model)
    fields = registry.setting_fields(args.model)
    known = set(OPTIONS) | set(fields) | set(DEFAULTS)
    cfg = dict(DEFAULTS)
    cfg.update({name: field.default for name, field in fields.items()})
    if args.mode not in BASE_MODES + tuple(spec.modes):
        offered = ", ".join(registry.extra_modes()[args.mode])
        raise UserError(f"--mode {args.mode}: offered by {offered}, not by --model {args.model}")
    sources = [YamlOptions(os.path.join(shipped_folder("configs"), f"{args.model}.yaml"),
                           f"configs/{args.model}.yaml")]
    if args.config:
        sources.append(YamlOptions(args.config))
    origin = {}  # option -> where its value came from, for messages ("file.yaml, line 3: key")
    for source in sources:
        _check_keys(source, known, spec)
        for name, key in _for_mode(source.values, spec, args.mode).items():
            cfg[name], origin[name] = source.values[key], source.place(key)
    given = {k: v for k, v in vars(args).items() if v is not None and k != "config"}
    cfg.update(given)
    where = Where({k: v for k, v in origin.items() if k not in given})
    _check_types(cfg, fields, where)
    _validate(cfg, where)
    return cfg


class Where:
    """How a message names an option: "--steps" when it is the command line's (or a default),
    "file.yaml, line 3: steps" when a YAML file gave its value."""

    def __init__(self, yaml_places):
        self.yaml_places = yaml_places

    def __call__(self, name):
        return self.yaml_places.get(name, f"--{name}")


def _check_keys(source, known, spec):
    """Every key of a YAML file an option of this method (or <extra mode>_<option>); a
    misspelt one named with its line and the option it is closest to."""
    def allowed(key):
        return key in known or any(key.startswith(m + "_") and key[len(m) + 1:] in known
                                   for m in spec.modes)

    candidates = sorted(known) + [f"{m}_{k}" for m in spec.modes for k in sorted(known)]
    unknown = [key for key in source.values if not allowed(key)]
    if unknown:
        raise UserError("; ".join(f"{source.place(key)}: unknown option{did_you_mean([str(key)], candidates)}"
                                  for key in unknown))


def _for_mode(values, spec, mode):
    """{option: the YAML key that sets it}. A method's extra mode reads its own defaults,
    <mode>_<option> (e.g. distill_steps): in that mode they override <option>; in any other
    mode they are ignored."""
    out = {key: key for key in values if not any(key.startswith(m + "_") for m in spec.modes)}
    prefix = mode + "_"
    out.update({key[len(prefix):]: key for key in values if mode in spec.modes and key.startswith(prefix)})
    return out


SWITCHES = ("resume", "skip_bad_images", "verbose")  # store_true flags, booleans in YAML


def _check_types(cfg, fields, where):
    """Every option must have its declared type: the shared ones (OPTIONS, SWITCHES) and the
    method's settings. The command line converts its strings already; YAML can hold anything
    (``steps: thirty``, ``lr: fast``), so each value is converted here or named in one line."""
    kinds = {name: kind for name, (kind, _) in OPTIONS.items()}
    kinds.update({name: bool for name in SWITCHES})
    kinds.update({name: field.type for name, field in fields.items()})
    for name, kind in kinds.items():
        value = cfg.get(name)
        if value is None:
            continue
        try:
            cfg[name] = _converted(_parser_type(kind), value)
        except (TypeError, ValueError):
            raise UserError(f"{where(name)}: expected {getattr(kind, '__name__', kind)}, "
                            f"got {value!r}") from None


def _converted(convert, value):
    """``convert(value)``, refusing what would silently change meaning: a YAML boolean for a
    number, a fractional number for an int."""
    if convert in (int, float) and isinstance(value, bool):
        raise TypeError(value)
    if convert is int and isinstance(value, float) and not value.is_integer():
        raise ValueError(value)
    return convert(value)


def _validate_sizes(cfg, where):
    """--image_size sides multiples of 32; tiles inside the photo's pixels, with the model's
    aspect ratio (each tile is resized to --image_size), overlapping or touching."""
    from adkit.core.tiling import check_tiling

    height, width = cfg["image_size"]
    if height % 32 or width % 32 or min(height, width) < 32:
        raise UserError(f"{where('image_size')} sides must be multiples of 32, got {size_text(cfg['image_size'])}")
    if cfg.get("tile_stride") is not None and cfg.get("tile_size") is None:
        raise UserError(f"{where('tile_stride')} needs --tile_size")
    if cfg.get("tile_size") is not None:
        check_tiling(cfg["tile_size"], cfg.get("tile_stride"), cfg["image_size"])


def _validate(cfg, where):
    if cfg["device"] not in ("cpu", "gpu"):
        raise UserError(f"{where('device')} must be cpu or gpu, got {cfg['device']!r}")
    for name in ("batch_size", "eval_batch_size", "cpu_threads", "max_train_tiles"):
        if int(cfg[name]) < 1:
            raise UserError(f"{where(name)} must be >= 1, got {cfg[name]}")
    # training options: methods fitted in one pass (PatchCore, PaDiM) have none of them
    for name in ("steps", "epochs", "save_interval", "log_interval"):
        if cfg.get(name) is not None and int(cfg[name]) < 1:
            raise UserError(f"{where(name)} must be >= 1, got {cfg[name]}")
    _validate_sizes(cfg, where)
    if cfg.get("lr") is not None and cfg["lr"] <= 0:
        raise UserError(f"{where('lr')} must be > 0, got {cfg['lr']}")
    if cfg.get("threshold_policy") is not None:
        parse_policy(cfg["threshold_policy"], where("threshold_policy"))
    for name, allowed in (("data_format", DATA_FORMATS), ("eval_resolution", EVAL_RESOLUTIONS)):
        if cfg[name] not in allowed:
            raise UserError(f"{where(name)} must be one of {', '.join(allowed)}, got {cfg[name]!r}")
    if cfg["cpu_conv"] not in CPU_CONV_CHOICES:
        raise UserError(f"{where('cpu_conv')} must be one of {', '.join(CPU_CONV_CHOICES)}, got {cfg['cpu_conv']!r}")
    if cfg["save_format"] not in SAVE_FORMATS:
        raise UserError(f"{where('save_format')} must be one of {', '.join(SAVE_FORMATS)}, got {cfg['save_format']!r}")
    if cfg.get("amp") is not None:
        if cfg["amp"] not in AMP_CHOICES:
            raise UserError(f"{where('amp')} must be one of {', '.join(AMP_CHOICES)}, got {cfg['amp']!r}")
        if cfg["device"] != "gpu":
            raise UserError(f"{where('amp')} {cfg['amp']} needs --device gpu: Paddle's CPU build ignores "
                            "paddle.amp.auto_cast (float32 throughout) and has no bfloat16 conv2d "
                            "kernel; train without --amp on CPU")
    if cfg["mode"] == "infer" and not cfg.get("img_path"):
        raise UserError("--mode infer needs --img_path FILE_OR_DIR")
