"""Shared building blocks of the anomaly-detection toolkit (no model code lives here).

``from adkit import Predictor`` is the Python API (see adkit/predictor.py); it is imported on
first use so that ``import adkit`` stays light (no Paddle).
"""

__version__ = "0.1.0"
__all__ = ["Predictor", "Prediction"]


def __getattr__(name):
    if name in __all__:
        from . import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'adkit' has no attribute {name!r}")
