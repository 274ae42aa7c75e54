"""EfficientAD's entry in the method registry (see adkit/options/registry.py)."""
from dataclasses import dataclass

from adkit.options.registry import MethodSpec, setting


@dataclass
class EfficientADSettings:
    teacher_weights: str = setting("teacher: .pdparams or torch .pth (nelson1425 or anomalib "
                                   "layout), 'none' for random, unset for the shipped default")
    penalty_dir: str = setting("folder of generic images for the optional ImageNet penalty")
    weight_decay: float = setting("Adam weight decay (paper 1e-5)", 1e-5)
    backbone: str = setting("distill: the feature extractor the teacher imitates")
    backbone_weights: str = setting("distill: its weights (path, 'none', or unset for automatic)")
    crop_size: int = setting("distill: train the PDN on random crops of this size (pixels)")


SPEC = MethodSpec(
    names=("efficientad_s", "efficientad_m"),
    summary={"efficientad_s": "EfficientAD-S, the small PDN (Batzner et al., WACV 2024)",
             "efficientad_m": "EfficientAD-M, the medium PDN: more accurate in the paper, 2-3x slower than S (same paper)"},
    settings=EfficientADSettings,
    method="adkit.models.efficientad.method:EfficientADMethod",
    modes={"distill": "adkit.models.efficientad.distill:run_distill"},
    smoke_options={"teacher_weights": "none"},
)
