"""EfficientAD's losses and statistics: the hard feature loss (exact 0.999 quantile), the
ImageNet penalty, the autoencoder and student-autoencoder losses, the teacher's channel mean/std
and the map-normalisation quantiles.
"""
import math

import numpy as np
import paddle


from ..graph_ops import imagenet_normalize


def quantile_linear(values, q):
    """torch.quantile(values, q) (linear interpolation between order statistics), exact.

    Only the two order statistics around rank q*(n-1) are needed, so a top-k from the nearer
    end replaces a full sort (1.2M values: ~30 ms and ~11 MB instead of ~150 ms and ~43 MB).
    The rank is computed in float64, as numpy does.
    """
    flat = values.reshape([-1])
    n = flat.shape[0]
    position = q * (n - 1)
    below = int(math.floor(position))
    above = min(below + 1, n - 1)
    if below >= n // 2:  # the two ranks are among the largest: take them from the top
        top = paddle.topk(flat, n - below, largest=True)[0]
        low_value, high_value = top[n - below - 1], top[n - above - 1]
    else:
        bottom = paddle.topk(flat, above + 1, largest=False)[0]
        low_value, high_value = bottom[below], bottom[above]
    return low_value + (position - below) * (high_value - low_value)


def hard_feature_loss(teacher_out, student_out, q=0.999):
    """Mean of the squared teacher-student differences at or above their q-quantile;
    ``student_out`` is the student's teacher half (as many channels as the teacher)."""
    distance = paddle.square(teacher_out - student_out)
    with paddle.no_grad():
        hard = (distance >= quantile_linear(distance.detach(), q)).astype(distance.dtype)
    return (distance * hard).sum() / hard.sum()


# The losses square with paddle.square: `** 2` runs Paddle's general pow kernel, which took
# ~17 ms forward and as long backward on a 384x56x56 map (square: ~2 ms).

def penalty_loss(student_out):
    """Keeps the student's teacher half (``student_out``) from imitating the teacher on
    unrelated images."""
    return paddle.mean(paddle.square(student_out))


def autoencoder_loss(teacher_out, ae_out):
    return paddle.mean(paddle.square(teacher_out - ae_out))


def student_ae_loss(ae_out, student_out):
    """``student_out``: the student's autoencoder half."""
    return paddle.mean(paddle.square(ae_out - student_out))


class RunningChannelStats:
    """Per-channel population mean/std over every position of every batch (float64, Chan's
    pairwise update, so no catastrophic cancellation)."""

    def __init__(self, min_std=1e-6):
        self.count, self.mean, self.m2 = 0, None, None
        self.min_std = min_std

    def update(self, batch):
        values = np.asarray(batch, dtype=np.float64)
        values = values.transpose(1, 0, 2, 3).reshape(values.shape[1], -1)
        count, mean = values.shape[1], values.mean(axis=1)
        m2 = ((values - mean[:, None]) ** 2).sum(axis=1)
        if self.count == 0:
            self.count, self.mean, self.m2 = count, mean, m2
            return
        delta, total = mean - self.mean, self.count + count
        self.mean = self.mean + delta * count / total
        self.m2 = self.m2 + m2 + delta ** 2 * self.count * count / total
        self.count = total

    def result(self):
        if self.count == 0:
            raise ValueError("no values were seen")
        # a constant channel (possible with an untrained backbone) must not divide by zero
        std = np.maximum(np.sqrt(self.m2 / self.count), self.min_std)
        return self.mean.astype(np.float32), std.astype(np.float32)


def teacher_channel_stats(teacher, images_iter):
    """Per-channel mean and std of the teacher's output over all images and positions.

    ``teacher`` maps normalised images to features (the layer, or its frozen forward);
    ``images_iter`` yields float32 [B,3,H,W] RGB in [0,1]. The reference computes the mean of
    per-image channel means, then the std as the sqrt of the mean of per-image mean squared
    deviations from that mean; with equal-sized images that is exactly the population
    mean/std over all positions of all images, computed here in one pass
    (``RunningChannelStats``). Returns two float32 arrays [C].
    """
    stats = RunningChannelStats(min_std=0.0)  # as the reference: no floor
    with paddle.no_grad():
        for images in images_iter:
            stats.update(teacher(imagenet_normalize(paddle.to_tensor(images, dtype="float32"))).numpy())
    return stats.result()


def map_normalization_quantiles(local_maps, global_maps):
    """The 0.9 and 0.995 quantiles of the raw validation maps (numpy linear = torch's)."""
    local_maps = np.asarray(local_maps, dtype=np.float64).ravel()
    global_maps = np.asarray(global_maps, dtype=np.float64).ravel()
    return {"q_st_start": float(np.quantile(local_maps, 0.9)),
            "q_st_end": float(np.quantile(local_maps, 0.995)),
            "q_ae_start": float(np.quantile(global_maps, 0.9)),
            "q_ae_end": float(np.quantile(global_maps, 0.995))}
