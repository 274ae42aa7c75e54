"""Shared building blocks of the anomaly-detection toolkit (no model code lives here), in
layers, each importing only those before it:

    core/       errors, files, images, process set-up, Paddle versions, several processes, progress
    evaluate/   running a model over images, metrics, thresholds and calibration, synthetic defects, regions
    outputs/    run folders, per-image outputs, overlays, report.html
    options/    the command line and YAML options, the registry of methods (models/<name>/spec.py)
    train/      the training loop and checkpoints, optimiser helpers, weight loading
    deploy/     exported-model files, engines, the Predictor, int8, the HTTP service (serving/)
    pipelines/  train / evaluate / infer for main.py

``from adkit import Predictor`` is the Python API (adkit/deploy/predictor.py); it is imported on
first use so that ``import adkit`` stays light (no Paddle). The flat module names of earlier
versions (``adkit.config``, ``adkit.registry``, ...) still import, as the modules they became.
"""
import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"
__all__ = ["Predictor", "Prediction"]

# adkit 0.1's flat modules -> where they live now (scripts written against them keep working);
# adkit.outputs and adkit.deploy are packages now (their old modules: outputs.folders, deploy.exported)
MOVED_MODULES = {
    "errors": "core.errors", "io_utils": "core.io_utils", "image_io": "core.image_io",
    "runtime": "core.runtime", "compat": "core.compat", "distributed": "core.distributed",
    "metrics": "evaluate.metrics", "pixel_metrics": "evaluate.pixel_metrics",
    "evaluation": "evaluate.evaluation", "thresholds": "evaluate.thresholds",
    "synthetic": "evaluate.synthetic", "regions": "evaluate.regions", "calibration": "evaluate.calibration",
    "visualize": "outputs.visualize", "report": "outputs.report",
    "eval_outputs": "outputs.eval_folder", "config": "options.config", "registry": "options.registry",
    "trainer": "train.trainer", "training": "train.training", "train_log": "train.train_log",
    "weights": "train.weights", "fitted": "train.fitted",
    "engines": "deploy.engines", "predictor": "deploy.predictor", "quantize": "deploy.quantize",
    "serving": "deploy.serving",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import adkit.config`` gives the module adkit.options.config itself (one module object,
    so a patch through either name is seen through both). Last on sys.meta_path: it only
    answers names nothing else finds."""

    def find_spec(self, name, path=None, target=None):
        if name.startswith("adkit.") and name[len("adkit."):] in MOVED_MODULES:
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        module = importlib.import_module("adkit." + MOVED_MODULES[spec.name[len("adkit."):]])
        spec.loader_state = module.__spec__
        return module

    def exec_module(self, module):
        module.__spec__ = module.__spec__.loader_state  # the import system set the old name's spec on it


sys.meta_path.append(_MovedModuleFinder())


def __getattr__(name):
    if name in __all__:
        from adkit.deploy import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'adkit' has no attribute {name!r}")
