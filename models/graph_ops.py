"""Small tensor operations shared by the models' inference graphs (they must all export)."""
import functools

import numpy as np
import paddle

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalize(x):
    """RGB in [0,1] -> ImageNet mean/std normalised, as the pretrained networks expect."""
    mean = paddle.to_tensor(IMAGENET_MEAN, dtype="float32").reshape([1, 3, 1, 1])
    std = paddle.to_tensor(IMAGENET_STD, dtype="float32").reshape([1, 3, 1, 1])
    return (x - mean) / std


@functools.lru_cache(maxsize=None)
def interpolation_matrix(n_in, n_out, align_corners):
    """[n_out, n_in] weights of 1-D linear interpolation, as torch/paddle bilinear resizing:
    align_corners=True samples i*(n_in-1)/(n_out-1); False uses half-pixel centres with
    sources left of the first pixel clamped to it."""
    if align_corners:
        scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        source = np.arange(n_out) * scale
    else:
        source = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
    low = np.minimum(np.floor(source).astype(np.int64), n_in - 1)
    high = np.minimum(low + 1, n_in - 1)
    weights = np.zeros((n_out, n_in), dtype=np.float64)
    np.add.at(weights, (np.arange(n_out), low), 1.0 - (source - low))
    np.add.at(weights, (np.arange(n_out), high), source - low)
    return weights.astype(np.float32)


def bilinear_resize(x, size, align_corners=False):
    """F.interpolate(x, size, mode='bilinear') on [B,C,H,W] as two matmuls with constant matrices.

    Paddle Inference 3.3.1 with oneDNN (its CPU default) cannot run the interpolate ops
    ("ConvertPirAttribute2RuntimeAttribute not support ArrayAttribute<DoubleAttribute>");
    bilinear resizing is separable, so this gives the same numbers and exports everywhere.
    """
    rows = paddle.to_tensor(interpolation_matrix(x.shape[2], int(size[0]), align_corners))
    cols = paddle.to_tensor(interpolation_matrix(x.shape[3], int(size[1]), align_corners))
    return paddle.matmul(paddle.matmul(rows, x), cols, transpose_y=True)
