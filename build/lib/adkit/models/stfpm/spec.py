"""STFPM's entry in the method registry (see adkit/options/registry.py)."""
from dataclasses import dataclass

from adkit.options.registry import MethodSpec, setting


@dataclass
class STFPMSettings:
    backbone: str = setting("teacher and student architecture: efficientnet_lite0/2 (offline), "
                            "resnet18 (the paper), wide_resnet50_2, wide_resnet101_2",
                            "efficientnet_lite0")
    backbone_weights: str = setting("teacher weights: a .pdparams/.pth path, 'none' for random "
                                    "init, or unset for automatic")
    momentum: float = setting("SGD momentum (paper 0.9)", 0.9)
    weight_decay: float = setting("SGD weight decay (paper 1e-4)", 1e-4)


SPEC = MethodSpec(
    names=("stfpm",),
    summary="STFPM, student-teacher feature pyramid matching (Wang et al., BMVC 2021)",
    settings=STFPMSettings,
    method="adkit.models.stfpm.method:STFPMMethod",
    data_parallel=True,
    smoke_options={"backbone": "efficientnet_lite0", "backbone_weights": "none"},
    variants={"stfpm-r18": {"backbone": "resnet18"}},
)
