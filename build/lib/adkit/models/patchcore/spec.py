"""PatchCore's entry in the method registry (see adkit/options/registry.py)."""
from dataclasses import dataclass

from adkit.options.registry import MethodSpec, setting


@dataclass
class PatchCoreSettings:
    backbone: str = setting("feature extractor: efficientnet_lite0/2 (offline), wide_resnet50_2 "
                            "(the paper), resnet18, wide_resnet101_2", "efficientnet_lite0")
    backbone_weights: str = setting("backbone weights: a .pdparams/.pth path, or unset for automatic")
    coreset_ratio: float = setting("share of the training patches kept in the memory bank by "
                                   "greedy k-center selection (paper: 0.1, 0.01; 1 keeps all)", 0.1)
    embed_dim: int = setting("patch embedding size D after channel pooling (paper 1024; capped "
                             "at the backbone's channel count)", 1024)
    projection_dim: int = setting("random projection size the coreset selection works in "
                                  "(paper 128)", 128)
    neighbours: int = setting("b, bank neighbours in the image-score reweighting (paper 9; 1 "
                              "= plain maximum patch distance)", 9)
    bank_dtype: str = setting("memory bank storage: float32, or float16 (half the size)", "float32")


SPEC = MethodSpec(
    names=("patchcore",),
    summary="PatchCore, nearest-neighbour patch memory bank (Roth et al., CVPR 2022)",
    settings=PatchCoreSettings,
    method="adkit.models.patchcore.method:PatchCoreMethod",
    smoke_options={"backbone": "efficientnet_lite0", "backbone_weights": "none"},
    trains=False,
    variants={"patchcore-1%": {"coreset_ratio": 0.01}},
)
