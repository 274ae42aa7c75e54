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
    """F.interpolate(x, size, mode='bilinear') on [B,C,H,W] as plain 2-D matmuls with constant
    interpolation matrices (bilinear resizing is separable, so this is exact).

    Two Paddle Inference 3.3.1 + oneDNN (the CPU default) faults shape this: the interpolate ops
    do not run at all ("ConvertPirAttribute2RuntimeAttribute not support
    ArrayAttribute<DoubleAttribute>"), and broadcast batched matmuls crash or return NaN at
    batch >= 2, as does transpose_y with an inner dimension of 1. Hence 2-D matmuls only.
    """
    channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    out_h, out_w = int(size[0]), int(size[1])
    rows_t = paddle.to_tensor(np.ascontiguousarray(interpolation_matrix(height, out_h, align_corners).T))
    cols_t = paddle.to_tensor(np.ascontiguousarray(interpolation_matrix(width, out_w, align_corners).T))
    y = paddle.matmul(x.reshape([-1, width]), cols_t)                     # [B*C*H, W']
    y = y.reshape([-1, channels, height, out_w]).transpose([0, 1, 3, 2])  # [B,C,W',H]
    y = paddle.matmul(y.reshape([-1, height]), rows_t)                    # [B*C*W', H']
    return y.reshape([-1, channels, out_w, out_h]).transpose([0, 1, 3, 2])
