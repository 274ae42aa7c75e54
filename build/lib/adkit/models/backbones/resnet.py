"""ResNet / Wide-ResNet trunks (stem + layer1..layer3) for feature extraction.

Parameter names follow torchvision's layout (conv1, bn1, layer1.0.conv1, layer1.0.downsample.0,
...), which is also the layout of ``paddle.vision.models.resnet``, so either family of ImageNet
state dicts loads without renaming (torch's BN buffer names are converted by adkit.train.weights).
layer4 and fc are not built: anomaly detection only uses the outputs of layer1..layer3, and
``UNUSED_PREFIXES`` names the keys a loader must drop.

The residual blocks can also be built *transposed* (stride-2 convs become 2x2 stride-2 transposed
convs): the RD4AD decoder in models/rd4ad/networks.py is exactly that mirror of the encoder.
"""
import math

import paddle.nn as nn

from adkit.train import onednn_layers

UNUSED_PREFIXES = ("layer4.", "fc.")


def conv3x3(in_ch, out_ch, stride=1, data_format="NCHW"):
    return _conv(in_ch, out_ch, 3, stride, 1, data_format)


def conv1x1(in_ch, out_ch, stride=1, data_format="NCHW"):
    return _conv(in_ch, out_ch, 1, stride, 0, data_format)


def _conv(in_ch, out_ch, size, stride, padding, data_format):
    if data_format == "NHWC":  # a channels-last training twin (adkit.train.onednn_layers)
        return onednn_layers.Conv2D(in_ch, out_ch, size, stride=stride, padding=padding,
                                    bias_attr=False, data_format="NHWC")
    return nn.Conv2D(in_ch, out_ch, size, stride=stride, padding=padding, bias_attr=False)


def deconv2x2(in_ch, out_ch, data_format="NCHW"):
    """Doubles the resolution: the decoder's counterpart of a stride-2 conv."""
    if data_format == "NHWC":
        return onednn_layers.Conv2DTranspose(in_ch, out_ch, 2, stride=2, bias_attr=False,
                                             data_format="NHWC")
    return nn.Conv2DTranspose(in_ch, out_ch, 2, stride=2, bias_attr=False)


def batch_norm(channels, data_format="NCHW"):
    return nn.BatchNorm2D(channels, data_format=data_format)


def _resampling_conv(in_ch, out_ch, stride, transposed, data_format):
    """The block's conv that changes resolution (3x3 conv, or 2x2 deconv in a decoder)."""
    if transposed and stride == 2:
        return deconv2x2(in_ch, out_ch, data_format)
    return conv3x3(in_ch, out_ch, stride, data_format)


class BasicBlock(nn.Layer):
    """Two 3x3 convs with an identity (or ``downsample``) shortcut; ResNet-18/34."""

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, width_per_group=64,
                 transposed=False, data_format="NCHW"):
        super().__init__()
        if width_per_group != 64:
            raise ValueError("BasicBlock has no width multiplier (width_per_group must be 64)")
        self.conv1 = _resampling_conv(inplanes, planes, stride, transposed, data_format)
        self.bn1 = batch_norm(planes, data_format)
        self.conv2 = conv3x3(planes, planes, 1, data_format)
        self.bn2 = batch_norm(planes, data_format)
        self.relu = nn.ReLU()
        # torchvision's name; in a transposed (decoder) block this shortcut upsamples.
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Layer):
    """1x1 reduce, 3x3 (strided, torchvision v1.5), 1x1 expand x4; ResNet-50+ and Wide-ResNets
    (width_per_group=128 doubles the inner width)."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, width_per_group=64,
                 transposed=False, data_format="NCHW"):
        super().__init__()
        width = planes * width_per_group // 64
        self.conv1 = conv1x1(inplanes, width, 1, data_format)
        self.bn1 = batch_norm(width, data_format)
        self.conv2 = _resampling_conv(width, width, stride, transposed, data_format)
        self.bn2 = batch_norm(width, data_format)
        self.conv3 = conv1x1(width, planes * self.expansion, 1, data_format)
        self.bn3 = batch_norm(planes * self.expansion, data_format)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def make_stage(block, inplanes, planes, num_blocks, stride=1, width_per_group=64,
               transposed=False, data_format="NCHW"):
    """A torchvision-style ``layerN``: the first block changes resolution/width (with a
    projection shortcut when needed), the rest keep it. ``data_format="NHWC"`` builds a
    channels-last training twin: the same parameters, oneDNN's convolutions on the CPU."""
    out_ch = planes * block.expansion
    shortcut = None
    if stride != 1 or inplanes != out_ch:
        if transposed and stride == 2:
            projection = deconv2x2(inplanes, out_ch, data_format)
        else:
            projection = conv1x1(inplanes, out_ch, stride, data_format)
        shortcut = nn.Sequential(projection, batch_norm(out_ch, data_format))
    blocks = [block(inplanes, planes, stride, shortcut, width_per_group, transposed, data_format)]
    blocks += [block(out_ch, planes, 1, None, width_per_group, transposed, data_format)
               for _ in range(1, num_blocks)]
    return nn.Sequential(*blocks)


def init_like_torchvision(layer):
    """Re-initialise ``layer`` as torchvision/RD4AD do: Kaiming-normal (fan_out, ReLU) for
    convs, BN weight 1 / bias 0. Transposed convs keep torch's default, uniform(+-1/sqrt(fan_in))
    with torch's fan_in of a transposed weight [in, out, k, k] = out*k*k."""
    for sub in layer.sublayers(include_self=True):
        if isinstance(sub, nn.Conv2D):
            out_ch, _, kh, kw = sub.weight.shape
            std = math.sqrt(2.0 / (out_ch * kh * kw))
            nn.initializer.Normal(0.0, std)(sub.weight)
        elif isinstance(sub, nn.Conv2DTranspose):
            _, out_ch, kh, kw = sub.weight.shape
            bound = 1.0 / math.sqrt(out_ch * kh * kw)
            nn.initializer.Uniform(-bound, bound)(sub.weight)
        elif isinstance(sub, nn.BatchNorm2D):
            nn.initializer.Constant(1.0)(sub.weight)
            nn.initializer.Constant(0.0)(sub.bias)


class ResNetTrunk(nn.Layer):
    """conv1/bn1/relu/maxpool stem and layer1..layer3; forward -> [layer1, layer2, layer3]
    (strides 4, 8, 16). Expects an ImageNet-normalised input."""

    def __init__(self, block, layers, width_per_group=64):
        super().__init__()
        self.conv1 = nn.Conv2D(3, 64, 7, stride=2, padding=3, bias_attr=False)
        self.bn1 = nn.BatchNorm2D(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2D(3, stride=2, padding=1)
        widths = (64, 128, 256)
        inplanes = 64
        for index, (planes, num_blocks) in enumerate(zip(widths, layers), start=1):
            stage = make_stage(block, inplanes, planes, num_blocks, 1 if index == 1 else 2,
                               width_per_group)
            setattr(self, f"layer{index}", stage)
            inplanes = planes * block.expansion
        self.channels = tuple(w * block.expansion for w in widths)
        init_like_torchvision(self)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        f1 = self.layer1(x)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        return [f1, f2, f3]


def resnet18():
    return ResNetTrunk(BasicBlock, (2, 2, 2))


def wide_resnet50_2():
    return ResNetTrunk(Bottleneck, (3, 4, 6), width_per_group=128)


def wide_resnet101_2():
    return ResNetTrunk(Bottleneck, (3, 4, 23), width_per_group=128)


RESNETS = {"resnet18": resnet18, "wide_resnet50_2": wide_resnet50_2,
           "wide_resnet101_2": wide_resnet101_2}

