"""PatchCore (Roth et al., CVPR 2022): networks.py (patch embedding, nearest-neighbour scoring,
inference network), coreset.py (greedy k-center selection) and method.py (fitting the memory
bank, checkpoint). Names are imported on first use: reading spec.py loads no Paddle."""
from adkit.options.registry import lazy_attributes

_WHERE = {
    "PatchCoreMethod": "method",
    "PatchCoreInference": "networks",
    "PatchEmbedding": "networks",
    "channel_pooling": "networks",
    "nearest_distance": "networks",
    "nearest_index": "networks",
    "reweighted_score": "networks",
    "greedy_coreset": "coreset",
    "random_projection": "coreset",
}
__all__ = sorted(_WHERE)
__getattr__ = lazy_attributes(__name__, _WHERE)
