"""EfficientAD-S/M (Batzner et al., WACV 2024): networks.py (PDN, autoencoder), losses.py,
inference.py (the map every mode runs), augment.py, method.py (training recipe, checkpoints),
distill.py (teacher pretraining, --mode distill)."""
