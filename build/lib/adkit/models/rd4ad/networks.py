"""RD4AD: anomaly detection by reverse distillation (Deng & Li, CVPR 2022).

A frozen ImageNet encoder (teacher) gives features at strides 4/8/16. The one-class bottleneck
embedding (OCBE) fuses them into one compact code, and a decoder that mirrors the encoder
(student) must rebuild the teacher's three feature maps from that code. Trained on good images
only, the student fails where the image is anomalous: the anomaly map is 1 - cosine similarity
between teacher and student features, summed over the three scales, blurred (sigma 4).

Architecture follows the official code (hq-deng/RD4AD): for ResNet encoders the OCBE and
decoder use the encoder's block type and depths; for other encoders (EfficientNet-Lite) the
same structure is built from BasicBlocks at the encoder's channel widths.
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from adkit.core.image_io import image_hw

from ..backbones.resnet import (BasicBlock, Bottleneck, batch_norm, conv3x3, init_like_torchvision,
                                make_stage)
from ..graph_ops import gaussian_blur_matrix, resize_and_blur, summed_separable_maps  # noqa: F401 (re-exported)



# backbone -> (block type, OCBE residual blocks, decoder blocks per stage, width_per_group),
# as the official wide_resnet50_2/de_wide_resnet50_2, resnet18/de_resnet18 pairs.
ARCHITECTURES = {
    "resnet18": (BasicBlock, 2, (2, 2, 2), 64),
    "wide_resnet50_2": (Bottleneck, 3, (3, 4, 6), 128),
    "wide_resnet101_2": (Bottleneck, 3, (3, 4, 23), 128),
}


GENERIC_ARCHITECTURE = (BasicBlock, 2, (2, 2, 2), 64)


class OCBE(nn.Layer):
    """One-class bottleneck embedding: [f1, f2, f3] (strides 4/8/16) -> one code at stride 32
    with 2*c3 channels (2048 for WRN50-2).

    f1 goes through two stride-2 conv3x3-BN-ReLU (c1->c2->c3), f2 through one (c2->c3); both are
    concatenated with f3 and passed through a residual stage whose first block has stride 2.
    ``data_format="NHWC"``: the channels-last training twin (same parameters).
    """

    def __init__(self, channels, block, num_blocks, width_per_group=64, data_format="NCHW"):
        super().__init__()
        c1, c2, c3 = channels
        self.conv1 = conv3x3(c1, c2, 2, data_format)
        self.bn1 = batch_norm(c2, data_format)
        self.conv2 = conv3x3(c2, c3, 2, data_format)
        self.bn2 = batch_norm(c3, data_format)
        self.conv3 = conv3x3(c2, c3, 2, data_format)
        self.bn3 = batch_norm(c3, data_format)
        self.relu = nn.ReLU()
        self.out_channels = 2 * c3
        self.channel_axis = channel_axis(data_format)
        self.bn_layer = make_stage(block, 3 * c3, self.out_channels // block.expansion,
                                   num_blocks, stride=2, width_per_group=width_per_group,
                                   data_format=data_format)
        init_like_torchvision(self)

    def forward(self, feats):
        f1, f2, f3 = feats
        a = self.relu(self.bn1(self.conv1(f1)))
        a = self.relu(self.bn2(self.conv2(a)))
        b = self.relu(self.bn3(self.conv3(f2)))
        return self.bn_layer(paddle.concat([a, b, f3], axis=self.channel_axis))


class ReverseDecoder(nn.Layer):
    """The encoder run backwards: three residual stages whose first block upsamples x2 with a
    2x2 transposed conv; outputs [d1, d2, d3] shaped like the encoder's [f1, f2, f3]."""

    def __init__(self, channels, block, layers, width_per_group=64, data_format="NCHW"):
        super().__init__()
        inplanes = 2 * channels[2]
        # layer1 rebuilds f3, layer2 f2, layer3 f1 (names as in the official decoder)
        for index, (out_ch, num_blocks) in enumerate(zip(channels[::-1], layers), start=1):
            stage = make_stage(block, inplanes, out_ch // block.expansion, num_blocks, stride=2,
                               width_per_group=width_per_group, transposed=True,
                               data_format=data_format)
            setattr(self, f"layer{index}", stage)
            inplanes = out_ch
        init_like_torchvision(self)

    def forward(self, code):
        d3 = self.layer1(code)
        d2 = self.layer2(d3)
        d1 = self.layer3(d2)
        return [d1, d2, d3]


def build_student(backbone, channels, data_format="NCHW"):
    """(OCBE, ReverseDecoder) sized for an encoder named ``backbone`` with ``channels``;
    ``data_format="NHWC"`` builds the channels-last training twin."""
    block, ocbe_blocks, decoder_layers, width = ARCHITECTURES.get(backbone, GENERIC_ARCHITECTURE)
    return (OCBE(channels, block, ocbe_blocks, width, data_format),
            ReverseDecoder(channels, block, decoder_layers, width, data_format))


def channel_axis(data_format):
    return 1 if data_format == "NCHW" else -1


def rd4ad_loss(enc_feats, dec_feats, per_image=False, data_format="NCHW"):
    """Sum over scales of mean(1 - cos(teacher, student)).

    Default: cosine along channels at every position, averaged (the paper's Eq. 2).
    ``per_image=True``: cosine between whole flattened feature maps, one per image, as the
    official training script computes it (the same in either layout: the order of a map's
    values does not change a cosine).
    """
    total = 0.0
    for enc, dec in zip(enc_feats, dec_feats):
        if per_image:
            enc, dec = enc.flatten(1), dec.flatten(1)
        axis = 1 if per_image else channel_axis(data_format)
        total = total + (1.0 - F.cosine_similarity(enc, dec, axis=axis)).mean()
    return total


def anomaly_map(enc_feats, dec_feats, out_size):
    """[B,1,H,W] map: per scale 1 - cos along channels, bilinear (align_corners, as official)
    up to ``out_size`` (a side or (H, W)), summed over scales, then Gaussian-blurred (sigma 4,
    scipy's reflect borders). Resizing and blurring are both separable linear maps, so each
    scale is resized and blurred at once by a product of the two matrices, and the scales are
    summed inside the same matmul: exact, and the blur costs no op in the exported graph."""
    out_h, out_w = image_hw(out_size)
    distances = [1.0 - F.cosine_similarity(enc, dec, axis=1).unsqueeze(1)
                 for enc, dec in zip(enc_feats, dec_feats)]
    return summed_separable_maps(distances,
                                 [resize_and_blur(d.shape[2], out_h, True) for d in distances],
                                 [resize_and_blur(d.shape[3], out_w, True) for d in distances])


class RD4ADInference(nn.Layer):
    """x [B,3,H,W] RGB in [0,1] at ``image_size`` (a side or (H, W)) -> (map [B,1,H,W],
    score [B] = map max)."""

    def __init__(self, encoder, bottleneck, decoder, image_size):
        super().__init__()
        self.encoder = encoder
        self.bottleneck = bottleneck
        self.decoder = decoder
        self.image_size = image_hw(image_size)

    def forward(self, x):
        enc = self.encoder(x)
        dec = self.decoder(self.bottleneck(enc))
        amap = anomaly_map(enc, dec, self.image_size)
        return amap, amap.flatten(1).max(axis=1)
