"""Fitting PaDiM's per-position Gaussians with memory for little more than the result: the
[P, d, d] second moments accumulate in float32 in the array that then holds the inverse
covariances, inverted a few positions at a time (WRN-50-2, d = 550, 56 x 56 positions: 3.6 GiB;
nothing else of that size is ever allocated). An accumulator may cover a range of positions
only, so that float16 statistics can be fitted in several passes without ever holding all of
them in float32 (see PaDiMMethod)."""
import numpy as np

from adkit.core.runtime import zeros_outside_heap

REGULARISATION = 0.01  # the paper's epsilon * I added to each covariance
POSITION_BLOCK = 32  # positions per float32 outer-product block (d = 550: 39 MB)
INVERSE_BLOCK = 8  # positions inverted at a time, in float64 (d = 550: a few 19 MB temporaries)


class GaussianAccumulator:
    """Sums of (x - k) and (x - k)(x - k)^T per position, k being the first image's embedding:
    shifting by a sample keeps float32 sums accurate (no large mean to cancel)."""

    def __init__(self, positions=slice(None)):
        self.positions = positions
        self.n = 0
        self.shift = self.sums = self.moments = None

    def add(self, batch):
        """``batch`` [B, d, P] float32 (all positions; this accumulator takes its range)."""
        x = np.ascontiguousarray(batch[:, :, self.positions].transpose(2, 0, 1), dtype=np.float32)
        if self.moments is None:
            positions, _, d = x.shape
            self.shift = x[:, 0].astype(np.float64)                              # [P, d]
            self.sums = np.zeros((positions, d), np.float64)
            self.moments = zeros_outside_heap((positions, d, d), np.float32)
        x -= self.shift[:, None].astype(np.float32)
        self.sums += x.sum(axis=1)
        for start in range(0, x.shape[0], POSITION_BLOCK):
            block = x[start:start + POSITION_BLOCK]
            self.moments[start:start + POSITION_BLOCK] += np.matmul(block.transpose(0, 2, 1), block)
        self.n += x.shape[1]

    def finish(self, out=None):
        """(mean [P, d] float32, inverse covariances [P, d, d]), computed in place in float32,
        or written into ``out`` (e.g. a float16 slice of the final array: no second copy)."""
        if self.n < 2:
            raise ValueError("PaDiM needs at least 2 training images")
        mean = self.sums / self.n                                                 # shifted
        eye = REGULARISATION * np.eye(self.moments.shape[1])
        target = self.moments if out is None else out
        for start in range(0, len(self.moments), INVERSE_BLOCK):
            m = mean[start:start + INVERSE_BLOCK]
            cov = self.moments[start:start + INVERSE_BLOCK].astype(np.float64)
            cov -= self.n * m[:, :, None] * m[:, None, :]
            cov /= self.n - 1
            cov += eye
            target[start:start + INVERSE_BLOCK] = np.linalg.inv(cov)
        self.moments = None
        return (mean + self.shift).astype(np.float32), target


def merge_gaussians(mean, inv_cov, count, more):
    """(mean, inverse covariances) of ``count`` samples per position merged with those
    accumulated in ``more`` (a GaussianAccumulator): the pooled mean and the pooled scatter
    (Chan et al.'s parallel update), the same regularisation as fit; in ``inv_cov``'s dtype."""
    m = more.n
    new_mean = more.shift + more.sums / m                                         # [P, d] float64
    eye = REGULARISATION * np.eye(inv_cov.shape[1])
    out_mean = np.empty(mean.shape, np.float32)
    out_inv = np.empty_like(inv_cov)
    total = count + m
    for start in range(0, len(inv_cov), INVERSE_BLOCK):
        block = slice(start, start + INVERSE_BLOCK)
        old_scatter = (np.linalg.inv(inv_cov[block].astype(np.float64)) - eye) * (count - 1)
        shifted = more.sums[block] / m
        new_scatter = more.moments[block].astype(np.float64) - m * shifted[:, :, None] * shifted[:, None, :]
        delta = new_mean[block] - mean[block].astype(np.float64)
        scatter = old_scatter + new_scatter + (count * m / total) * delta[:, :, None] * delta[:, None, :]
        out_inv[block] = np.linalg.inv(scatter / (total - 1) + eye)
        out_mean[block] = (count * mean[block].astype(np.float64) + m * new_mean[block]) / total
    return out_mean, out_inv
