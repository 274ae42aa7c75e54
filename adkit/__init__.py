"""Shared building blocks of the anomaly-detection toolkit, in layers, each importing only those
before it (doc/architecture.md; tests/test_layers.py enforces it):

    core/       errors, files, images, process set-up, Paddle versions, several processes, progress
    datasets    dataset layouts on disk (the repository's datasets/ folder)
    evaluate/   running a model over images, metrics, thresholds and calibration, synthetic defects, regions
    outputs/    run folders, per-image outputs, overlays, report.html
    options/    the command line and YAML options, the registry of methods (models/<name>/spec.py)
    train/      the training loop and checkpoints, optimiser helpers, weight loading, frozen networks
    models      the six methods (the repository's models/ folder)
    deploy/     exported-model files, engines, the Predictor, int8, the HTTP service (serving/)
    pipelines/  train / evaluate / infer for main.py
    commands/   the command lines of main.py, export_model.py, infer.py and serve.py

``from adkit import Predictor`` is the Python API (adkit/deploy/predictor.py); it is imported on
first use so that ``import adkit`` stays light (no Paddle) and changes nothing in the host
process (``adkit.tune_process`` does that, when an application asks).
"""
import os

__version__ = "0.2.0"
__all__ = ["Predictor", "Prediction", "tune_process"]

# The methods and the dataset layouts are the repository's top-level folders models/ and datasets/,
# and adkit.models / adkit.datasets of the installed package (pyproject.toml puts them inside it, so
# no top-level `models` or `datasets` lands in site-packages). In a checkout that was not installed
# they sit beside this folder: the package's search path takes that folder too.
_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if not os.path.isdir(os.path.join(__path__[0], "models")) and os.path.isfile(
        os.path.join(_CHECKOUT, "models", "__init__.py")):
    __path__.append(_CHECKOUT)


def __getattr__(name):
    if name in ("Predictor", "Prediction"):
        from adkit.deploy import predictor

        return getattr(predictor, name)
    if name == "tune_process":
        from adkit.core.runtime import tune_process

        return tune_process
    raise AttributeError(f"module 'adkit' has no attribute {name!r}")
