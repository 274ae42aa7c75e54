"""PaDiM (Defard et al., ICPR 2021): networks.py (embedding, Mahalanobis map, inference
network), gaussian.py (fitting the per-position Gaussians in bounded memory) and method.py.
Names are imported on first use: reading spec.py loads no Paddle."""
from adkit.options.registry import lazy_attributes

_WHERE = {
    "PaDiMMethod": "method",
    "PaDiMInference": "networks",
    "PaDiMEmbedding": "networks",
    "channel_subset": "networks",
    "mahalanobis": "networks",
    "GaussianAccumulator": "gaussian",
}
__all__ = sorted(_WHERE)
__getattr__ = lazy_attributes(__name__, _WHERE)
