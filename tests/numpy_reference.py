"""Independent numpy/scipy/OpenCV versions of the map post-processing the methods share, for
the method tests (written from the papers and the libraries' documented behaviour, not from
models/graph_ops)."""
import cv2
import numpy as np
from scipy import ndimage


def bilinear(x, size):
    """[h, w] -> [size, size], half-pixel centres (F.interpolate align_corners=False; OpenCV
    INTER_LINEAR samples the same way when upsampling)."""
    return cv2.resize(np.asarray(x, np.float32), (size, size), interpolation=cv2.INTER_LINEAR)


def blurred(x, sigma=4.0):
    """scipy's Gaussian filter, its default 'reflect' border, radius 4 sigma (the official codes)."""
    return ndimage.gaussian_filter(np.asarray(x, np.float64), sigma=sigma)


def adaptive_avg_pool1d(v, n_out):
    """torch.nn.functional.adaptive_avg_pool1d along the last axis, by its documented bins."""
    n_in = v.shape[-1]
    out = np.empty(v.shape[:-1] + (n_out,), np.float64)
    for i in range(n_out):
        start = int(np.floor(i * n_in / n_out))
        stop = int(np.ceil((i + 1) * n_in / n_out))
        out[..., i] = v[..., start:stop].mean(axis=-1)
    return out


def box3(x):
    """3x3 average over the last two axes, zero padding counted (avg_pool2d(3, 1, 1))."""
    padded = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(1, 1), (1, 1)])
    h, w = x.shape[-2:]
    return sum(padded[..., i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9.0
