"""RD4AD's entry in the method registry (see adkit/options/registry.py)."""
from dataclasses import dataclass

from adkit.options.registry import MethodSpec, setting


@dataclass
class RD4ADSettings:
    backbone: str = setting("encoder: wide_resnet50_2 (the paper), resnet18, wide_resnet101_2, "
                            "efficientnet_lite0, efficientnet_lite2", "wide_resnet50_2")
    backbone_weights: str = setting("encoder weights: a .pdparams/.pth path, 'none' for random "
                                    "init, or unset for automatic")
    beta1: float = setting("Adam beta1 (paper 0.5)", 0.5)
    beta2: float = setting("Adam beta2 (paper 0.999)", 0.999)
    loss_per_image: bool = setting("cosine over each image's whole flattened feature map (the "
                                   "official training script) instead of per pixel (the paper)", False)


SPEC = MethodSpec(
    names=("rd4ad",),
    summary="RD4AD, reverse distillation from a one-class embedding (Deng & Li, CVPR 2022)",
    settings=RD4ADSettings,
    method="adkit.models.rd4ad.method:RD4ADMethod",
    data_parallel=True,
    smoke_options={"backbone": "efficientnet_lite0", "backbone_weights": "none"},
    variants={"rd4ad-wrn50": {"backbone": "wide_resnet50_2"}},
)
