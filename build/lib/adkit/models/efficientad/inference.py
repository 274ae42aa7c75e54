"""The EfficientAD inference network every mode runs (eval, infer, export): normalised teacher,
student and autoencoder maps, quantile normalisation, padding and resizing folded into matmuls.
"""

import numpy as np
import paddle
import paddle.nn as nn


from ..graph_ops import (imagenet_normalize, interpolation_matrix,
                         separable_map)


MAP_PADDING = 4  # the unpadded PDN loses this many pixels per side (in map units) at 256 px


QUANTILE_NAMES = ("q_st_start", "q_st_end", "q_ae_start", "q_ae_end")


def _padded_resize_matrix(n_in, n_out):
    """[n_out, n_in]: zero-pad by MAP_PADDING on both sides, then resize bilinearly. The
    padded entries are zeros, so the padding is just the interpolation matrix without its
    first and last MAP_PADDING columns (one op fewer in the exported graph)."""
    return interpolation_matrix(n_in + 2 * MAP_PADDING, n_out, False)[:, MAP_PADDING:-MAP_PADDING]


class EfficientADInference(nn.Layer):
    """The anomaly map, for every mode: x [B,3,H,W] RGB in [0,1] -> (map [B,1,H,W], score [B]).

    local = mean_c (T - S[:C])^2, global = mean_c (AE - S[C:])^2 (T normalised by the teacher
    mean/std), each mapped by 0.1 * (m - q_start) / (q_end - q_start), averaged, padded by 4
    with zeros and resized bilinearly to the input; score = max of the map. ``raw_maps`` gives
    the unnormalised maps, from which the quantiles are computed. Quantiles passed as None
    stay NaN until ``set_quantiles``, so a forgotten calibration cannot pass unnoticed.
    """

    def __init__(self, teacher, student, autoencoder, teacher_mean, teacher_std,
                 quantiles=None):
        super().__init__()
        self.teacher, self.student, self.autoencoder = teacher, student, autoencoder
        for name, value in (("teacher_mean", teacher_mean), ("teacher_std", teacher_std)):
            self.register_buffer(name, paddle.to_tensor(
                np.asarray(value, dtype=np.float32).reshape([1, -1, 1, 1])))
        for name in QUANTILE_NAMES:
            self.register_buffer(name, paddle.full([1], float("nan"), dtype="float32"))
        if quantiles is not None:
            self.set_quantiles(quantiles)

    def set_quantiles(self, quantiles):
        for name in QUANTILE_NAMES:
            getattr(self, name).set_value(np.full([1], quantiles[name], dtype=np.float32))

    def raw_maps(self, x):
        """(local, global) unnormalised maps [B,1,h,w] at the PDN's resolution."""
        x = imagenet_normalize(x)
        teacher_out = (self.teacher(x) - self.teacher_mean) / self.teacher_std
        student_out = self.student(x)
        ae_out = self.autoencoder(x)
        channels = teacher_out.shape[1]
        # paddle.square, not ** 2: the pow op has no oneDNN kernel (~8% of EfficientAD-S time)
        local_map = paddle.mean(paddle.square(teacher_out - student_out[:, :channels]), axis=1,
                                keepdim=True)
        global_map = paddle.mean(paddle.square(ae_out - student_out[:, channels:]), axis=1,
                                 keepdim=True)
        return local_map, global_map

    def forward(self, x):
        local_map, global_map = self.raw_maps(x)
        local_map = 0.1 * (local_map - self.q_st_start) / (self.q_st_end - self.q_st_start)
        global_map = 0.1 * (global_map - self.q_ae_start) / (self.q_ae_end - self.q_ae_start)
        anomaly_map = separable_map(0.5 * local_map + 0.5 * global_map,
                                    _padded_resize_matrix(local_map.shape[2], x.shape[2]),
                                    _padded_resize_matrix(local_map.shape[3], x.shape[3]))
        return anomaly_map, paddle.max(anomaly_map.flatten(1), axis=1)
