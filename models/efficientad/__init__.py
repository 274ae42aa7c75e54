"""EfficientAD-S/M (Batzner et al., WACV 2024): networks.py (PDN, autoencoder), losses.py,
inference.py (the map every mode runs), augment.py, method.py (training recipe, checkpoints),
distill.py (teacher pretraining, --mode distill).

The names below are imported on first use, so that reading the registry entry (spec.py)
does not load Paddle."""
from adkit.options.registry import lazy_attributes

_WHERE = {
    "PenaltyImages": "augment",
    "color_jitter": "augment",
    "random_color_jitter": "augment",
    "MAP_PADDING": "inference",
    "QUANTILE_NAMES": "inference",
    "EfficientADInference": "inference",
    "autoencoder_loss": "losses",
    "hard_feature_loss": "losses",
    "map_normalization_quantiles": "losses",
    "penalty_loss": "losses",
    "quantile_linear": "losses",
    "student_ae_loss": "losses",
    "teacher_channel_stats": "losses",
    "DEFAULT_TEACHER_DIR": "method",
    "MODEL_SIZES": "method",
    "EfficientADMethod": "method",
    "default_teacher_path": "method",
    "PDN": "networks",
    "TEACHER_CHANNELS": "networks",
    "AutoEncoder": "networks",
    "autoencoder_upsample_sizes": "networks",
    "pdn_out_size": "networks",
    "teacher_state_from_torch": "networks",
}
__all__ = sorted(_WHERE)
__getattr__ = lazy_attributes(__name__, _WHERE)
