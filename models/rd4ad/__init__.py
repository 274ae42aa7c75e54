"""RD4AD (Deng & Li, CVPR 2022): networks.py (OCBE, reverse decoder, loss, map, inference
network) and method.py (training recipe, checkpoint).

The names below are imported on first use, so that reading the registry entry (spec.py)
does not load Paddle."""
import importlib

_WHERE = {
    "CHECKPOINT_NAME": "method",
    'RD4ADMethod': 'method',
    "OCBE": "networks",
    'RD4ADInference': 'networks',
    "ReverseDecoder": "networks",
    "anomaly_map": "networks",
    "build_student": "networks",
    "gaussian_blur_matrix": "networks",
    'gaussian_kernel1d': 'networks',
    'rd4ad_loss': 'networks',
}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
