"""STFPM (Wang et al., BMVC 2021): networks.py (student, loss, map, inference network) and
method.py (training recipe, checkpoint). Names are imported on first use: reading spec.py
loads no Paddle."""
from adkit.options.registry import lazy_attributes

_WHERE = {
    "STFPMMethod": "method",
    "STFPMInference": "networks",
    "Student": "networks",
    "anomaly_map": "networks",
    "level_maps": "networks",
    "stfpm_loss": "networks",
}
__all__ = sorted(_WHERE)
__getattr__ = lazy_attributes(__name__, _WHERE)
