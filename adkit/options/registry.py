"""The method registry: each method declares itself once, in ``models/<method>/spec.py``.

The methods sit above this package: they import it, it finds them by name at run time
(``adkit.models.<folder>.spec``), so no static import goes upwards.

A spec names the ``--model`` values it serves, its typed settings (a dataclass whose fields are
its own options, with types and help), where its AnomalyMethod lives, any extra ``--mode`` it
adds, and the options of a quick smoke run for tests and benchmarks. Specs import no Paddle, so
the command line and ``--help`` read them cheaply; the method itself is imported on use.
Adding a method: a folder under models/ with a spec.py, a YAML in configs/, a TIPC config.
"""
import dataclasses
import importlib
import importlib.util
import os

from adkit.core.errors import UserError
from adkit.core.io_utils import read_json, write_json

# Options (adkit.options.config) that may differ between training and later use (eval, infer, export); every other
# option is taken from the training run (train_config.json), so the same network is rebuilt.
RUNTIME_OPTIONS = ("mode", "data_dir", "data_format", "train_dir", "test_good_dir", "test_defect_dir",
                   "mask_dir", "eval_resolution", "cls", "output_dir", "device", "cpu_threads",
                   "eval_batch_size", "img_path", "threshold", "threshold_policy", "save_format",
                   "resume", "skip_bad_images", "verbose", "log_dir")
TRAIN_CONFIG_FILE = "train_config.json"


def setting(help_text, default=None):
    """A method option: a dataclass field with its --help text (the value comes from the
    method's YAML and the command line; ``default`` applies when neither gives one)."""
    return dataclasses.field(default=default, metadata={"help": help_text})


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    names: tuple  # --model values this method serves
    summary: object  # one line: the method and its paper; or {name: line} when names differ
    settings: type  # dataclass of the method's own options
    method: str  # "module:Class" of its AnomalyMethod (imported on use: it pulls in Paddle)
    modes: dict = dataclasses.field(default_factory=dict)  # extra --mode: "module:function"
    smoke_options: dict = dataclasses.field(default_factory=dict)  # quick run, no downloads
    variants: dict = dataclasses.field(default_factory=dict)  # more benchmark cases: label: options
    trains: bool = True  # False: fitted in one pass (no steps, no optimiser), e.g. a memory bank
    data_parallel: bool = False  # several processes train one model together (batched training)

    def build(self, cfg):
        return _load(self.method)(cfg)

    def mode_runner(self, mode):
        return _load(self.modes[mode])


def _load(target):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _discover():
    specs = {}
    models_dir = importlib.util.find_spec("adkit.models").submodule_search_locations[0]
    for folder in sorted(os.listdir(models_dir)):
        if os.path.isfile(os.path.join(models_dir, folder, "spec.py")):
            spec = importlib.import_module(f"adkit.models.{folder}.spec").SPEC
            for name in spec.names:
                specs[name] = spec
    return specs


_SPECS = None


def all_specs():
    """{model name: MethodSpec}, discovered once from the method folders."""
    global _SPECS
    if _SPECS is None:
        _SPECS = _discover()
    return _SPECS


def summary_of(model):
    """The one-line description of ``model`` (a spec may describe each of its names)."""
    summary = spec_for(model).summary
    return summary[model] if isinstance(summary, dict) else summary


def model_names():
    return tuple(all_specs())


def spec_for(model):
    specs = all_specs()
    if model not in specs:
        raise UserError(f"--model {model}: unknown (choose {', '.join(specs)})")
    return specs[model]


def extra_modes():
    """{mode: [models that offer it]} for the modes methods add (e.g. distill)."""
    modes = {}
    for name, spec in all_specs().items():
        for mode in spec.modes:
            modes.setdefault(mode, []).append(name)
    return modes


def benchmark_cases():
    """{label: (model, options)}: each model with its smoke options (no downloads), then the
    variants methods declare (e.g. RD4AD with the paper's WRN50-2 encoder)."""
    cases = {name: (name, dict(spec.smoke_options)) for name, spec in all_specs().items()}
    for name, spec in all_specs().items():
        for label, options in spec.variants.items():
            cases[label] = (name, {**spec.smoke_options, **options})
    return cases


def method_settings(cfg):
    """The method's typed settings (its spec's dataclass) from ``cfg``; missing ones take their
    declared defaults."""
    spec = spec_for(cfg["model"])
    names = setting_fields(cfg["model"])
    return spec.settings(**{name: cfg[name] for name in names if name in cfg})


def setting_fields(model):
    return {f.name: f for f in dataclasses.fields(spec_for(model).settings)}


# -- trained models on disk --------------------------------------------------------------

def build_method(cfg):
    """A fresh (untrained) method (its module is imported now: it pulls in Paddle)."""
    return spec_for(cfg["model"]).build(cfg)


def save_training_config(cfg, ckpt_dir):
    write_json(os.path.join(ckpt_dir, TRAIN_CONFIG_FILE),
               {k: v for k, v in cfg.items() if k not in RUNTIME_OPTIONS})


def load_trained(ckpt_dir, runtime_cfg=None, expected_model=None):
    """(cfg, method) for the model trained in ``ckpt_dir``; ``runtime_cfg`` supplies RUNTIME_OPTIONS."""
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
