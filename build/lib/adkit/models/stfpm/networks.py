"""STFPM (Wang et al., BMVC 2021): student-teacher feature pyramid matching.

A frozen ImageNet teacher and a student of the same architecture, trained from random weights
on good images to reproduce the teacher's features at strides 4, 8 and 16 (ResNet-18 layer1-3;
on EfficientNet-Lite the stage outputs at those strides). Where the image is anomalous the
student has never learnt to follow: the map is, per level, half the squared distance between
the channel-normalised features, upsampled bilinearly to the image and multiplied over the
levels; the image score is its maximum.
"""
import paddle
import paddle.nn as nn

from adkit.core.image_io import image_hw

from ..backbones import resnet
from ..backbones.efficientnet_lite import EfficientNetLite, EfficientNetLiteEncoder
from ..backbones.encoders import EFFICIENTNET_VARIANTS
from ..graph_ops import bilinear_resize, imagenet_normalize

NORM_EPS = 1e-12  # as F.normalize


class Student(nn.Layer):
    """The teacher's architecture with random weights, trained: x [B,3,H,W] RGB in [0,1] ->
    [f4, f8, f16], its input scaled as the teacher's (ImageNet mean/std for ResNets, the TF
    scaling inside EfficientNet-Lite)."""

    def __init__(self, backbone):
        super().__init__()
        self.is_resnet = backbone in resnet.RESNETS
        if self.is_resnet:
            self.net = resnet.RESNETS[backbone]()
        else:
            self.net = EfficientNetLite(EFFICIENTNET_VARIANTS[backbone])
            # the classifier head and the stages past stride 16 are never used: drop them, so
            # the optimizer sees only parameters that get gradients
            last = self.net._stage_ends[max(EfficientNetLiteEncoder.STAGES) - 1]
            self.net._blocks = nn.LayerList(list(self.net._blocks)[:last + 1])
            del self.net._conv_head, self.net._bn1, self.net._fc

    def forward(self, x01):
        if self.is_resnet:
            return self.net(imagenet_normalize(x01))
        return self.net.extract_features(x01, EfficientNetLiteEncoder.STAGES)


def _normalized(f):
    norm = paddle.sqrt(paddle.square(f).sum(axis=1, keepdim=True))
    return f / paddle.clip(norm, min=NORM_EPS)


def level_maps(teacher_feats, student_feats):
    """Per level [B,1,h,w]: 0.5 * ||t/||t|| - s/||s||||^2 along channels."""
    return [0.5 * paddle.square(_normalized(t) - _normalized(s)).sum(axis=1, keepdim=True)
            for t, s in zip(teacher_feats, student_feats)]


def stfpm_loss(teacher_feats, student_feats):
    """Sum over levels of the per-position loss averaged over positions and images (Eq. 1-2)."""
    return sum(m.mean() for m in level_maps(teacher_feats, student_feats))


def anomaly_map(teacher_feats, student_feats, out_size):
    """[B,1,H,W]: the product over levels of the per-level maps, each upsampled bilinearly
    (align_corners=False, as the official code) to ``out_size`` (a side or (H, W))."""
    amap = None
    for m in level_maps(teacher_feats, student_feats):
        up = bilinear_resize(m, image_hw(out_size))
        amap = up if amap is None else amap * up
    return amap


class STFPMInference(nn.Layer):
    """x [B,3,H,W] RGB in [0,1] at ``image_size`` (a side or (H, W)) -> (map [B,1,H,W],
    score [B] = map max)."""

    def __init__(self, teacher, student, image_size):
        super().__init__()
        self.teacher, self.student = teacher, student
        self.image_size = image_hw(image_size)

    def forward(self, x):
        amap = anomaly_map(self.teacher(x), self.student(x), self.image_size)
        return amap, amap.flatten(1).max(axis=1)
