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


def summed_separable_maps(xs, rows, cols):
    """sum_i rows[i] @ xs[i][b, c] @ cols[i].T for [B,C,H_i,W_i] tensors and constant numpy
    matrices rows[i] [H',H_i], cols[i] [W',W_i]: any separable linear maps (bilinear resizing,
    zero padding, a reflect-bordered blur, or products of them) applied and summed.

    Each input is first mapped along W; the results are stacked along H, so one matmul with
    the stacked row matrices [H', sum H_i] maps and sums them all (fewer ops in the exported
    graph than one map per input plus adds). Only plain 2-D matmuls, because of two Paddle
    Inference 3.3.1 + oneDNN (the CPU default) faults: the interpolate ops do not run at all
    ("ConvertPirAttribute2RuntimeAttribute not support ArrayAttribute<DoubleAttribute>"), and
    broadcast batched matmuls crash or return NaN at batch >= 2, as does transpose_y with an
    inner dimension of 1.
    """
    channels = xs[0].shape[1]
    out_h, out_w = rows[0].shape[0], cols[0].shape[0]
    mapped_w = []
    for x, col in zip(xs, cols):
        height, width = x.shape[2], x.shape[3]
        y = paddle.matmul(x.reshape([-1, width]), _constant(col.T))          # [B*C*H_i, W']
        mapped_w.append(y.reshape([-1, channels, height, out_w]))
    y = mapped_w[0] if len(mapped_w) == 1 else paddle.concat(mapped_w, axis=2)
    stacked_rows = np.concatenate(rows, axis=1)                              # [H', sum H_i]
    y = y.transpose([0, 1, 3, 2]).reshape([-1, stacked_rows.shape[1]])      # [B*C*W', sum H_i]
    y = paddle.matmul(y, _constant(stacked_rows.T))                          # [B*C*W', H']
    return y.reshape([-1, channels, out_w, out_h]).transpose([0, 1, 3, 2])


def separable_map(x, rows, cols):
    """rows @ x[b, c] @ cols.T on [B,C,H,W] (see ``summed_separable_maps``)."""
    return summed_separable_maps([x], [rows], [cols])


def _constant(matrix):
    return paddle.to_tensor(np.ascontiguousarray(matrix, dtype=np.float32))


def bilinear_resize(x, size, align_corners=False):
    """F.interpolate(x, size, mode='bilinear') on [B,C,H,W], exactly (it is separable)."""
    rows = interpolation_matrix(x.shape[2], int(size[0]), align_corners)
    cols = interpolation_matrix(x.shape[3], int(size[1]), align_corners)
    return separable_map(x, rows, cols)


# -- constant linear maps of the anomaly-map post-processing (all separable) ---------------

BLUR_SIGMA = 4.0  # RD4AD, PatchCore and PaDiM all smooth their maps with sigma 4
BLUR_TRUNCATE = 4.0  # scipy.ndimage.gaussian_filter's default: radius = round(4 * sigma)


def gaussian_kernel1d(sigma, truncate=BLUR_TRUNCATE):
    """Normalised 1-D Gaussian taps over [-r, r], r = int(truncate * sigma + 0.5) (as scipy)."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (x / sigma) ** 2)
    return taps / taps.sum()


def gaussian_blur_matrix(n, sigma):
    """[n, n] matrix B with B @ v == scipy.ndimage.gaussian_filter1d(v, sigma, mode='reflect',
    truncate=4): borders extended half-sample symmetrically (d c b a | a b c d), reflected
    again as often as the radius needs (paddle's own 'reflect' pad is scipy's 'mirror')."""
    taps = gaussian_kernel1d(sigma)
    radius = (len(taps) - 1) // 2
    source = np.arange(n)[:, None] + np.arange(-radius, radius + 1)[None, :]  # [n, taps]
    source = np.mod(source, 2 * n)
    source = np.where(source >= n, 2 * n - 1 - source, source)
    matrix = np.zeros((n, n), dtype=np.float64)
    np.add.at(matrix, (np.repeat(np.arange(n), len(taps)), source.ravel()), np.tile(taps, n))
    return matrix


@functools.lru_cache(maxsize=None)
def resize_and_blur(n_in, n_out, align_corners, sigma=BLUR_SIGMA):
    """[n_out, n_in]: linear resize, then the Gaussian blur, as one matrix. Cached: numpy's
    threads would compete with Paddle's spinning OpenMP threads on every forward pass."""
    return (gaussian_blur_matrix(n_out, sigma) @ interpolation_matrix(n_in, n_out, align_corners)
            ).astype(np.float32)


@functools.lru_cache(maxsize=None)
def nearest_matrix(n_in, n_out):
    """[n_out, n_in] nearest-neighbour resize (F.interpolate mode='nearest': i -> floor(i*n_in/n_out))."""
    matrix = np.zeros((n_out, n_in), dtype=np.float32)
    matrix[np.arange(n_out), np.floor(np.arange(n_out) * n_in / n_out).astype(np.int64)] = 1.0
    return matrix


@functools.lru_cache(maxsize=None)
def box_matrix(n, size=3):
    """[n, n] moving average over ``size`` neighbours with zero padding, divided by ``size``
    even at the borders (avg_pool, stride 1, padding size//2, padded zeros counted)."""
    half = size // 2
    offsets = np.arange(n)[:, None] - np.arange(n)[None, :]
    return (np.abs(offsets) <= half).astype(np.float32) / size


def adaptive_pool_matrix(n_in, n_out):
    """[n_in, n_out] so that v @ M == adaptive_avg_pool1d(v, n_out): output i averages inputs
    floor(i*n_in/n_out) .. ceil((i+1)*n_in/n_out)-1 (bins overlap or repeat when n_out > n_in)."""
    matrix = np.zeros((n_in, n_out), dtype=np.float64)
    for i in range(n_out):
        start, stop = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        matrix[start:stop, i] = 1.0 / (stop - start)
    return matrix
