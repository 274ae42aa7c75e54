"""RD4AD (Deng & Li, CVPR 2022): networks.py (OCBE, reverse decoder, loss, map, inference
network) and method.py (training recipe, checkpoint).

The names below are imported on first use, so that reading the registry entry (spec.py)
does not load Paddle."""
from adkit.options.registry import lazy_attributes

_WHERE = {
    "RD4ADMethod": "method",
    "OCBE": "networks",
    "RD4ADInference": "networks",
    "ReverseDecoder": "networks",
    "anomaly_map": "networks",
    "build_student": "networks",
    "gaussian_blur_matrix": "networks",
    "rd4ad_loss": "networks",
}
__all__ = sorted(_WHERE)
__getattr__ = lazy_attributes(__name__, _WHERE)
