"""PaDiM's entry in the method registry (see adkit/options/registry.py)."""
from dataclasses import dataclass

from adkit.options.registry import MethodSpec, setting


@dataclass
class PaDiMSettings:
    backbone: str = setting("feature extractor: efficientnet_lite0/2 (offline), resnet18, "
                            "wide_resnet50_2 (the paper's two), wide_resnet101_2", "efficientnet_lite0")
    backbone_weights: str = setting("backbone weights: a .pdparams/.pth path, or unset for automatic")
    feature_dims: int = setting("d, random channels kept (0: the paper's 100 for ResNet-18 and "
                                "Lite, 550 for WRN-50-2)", 0)
    stats_dtype: str = setting("inverse covariance storage: float32, or float16 (half the size)",
                               "float32")


SPEC = MethodSpec(
    names=("padim",),
    summary="PaDiM, a Gaussian per patch position (Defard et al., ICPR 2021)",
    settings=PaDiMSettings,
    method="adkit.models.padim.method:PaDiMMethod",
    smoke_options={"backbone": "efficientnet_lite0", "backbone_weights": "none"},
    trains=False,
    variants={"padim-r18": {"backbone": "resnet18"}},
)
