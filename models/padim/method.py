"""Fitting PaDiM: a pass over the good images accumulates each position's Gaussian."""
import math

import numpy as np

from adkit.core.errors import UserError
from adkit.core.runtime import zeros_outside_heap

from ..fitted_method import FittedFeatureMethod, check_choice
from .gaussian import GaussianAccumulator, merge_gaussians
from .networks import PaDiMEmbedding, PaDiMInference, channel_subset, default_dims

STATS_DTYPES = ("float32", "float16")
# float16 statistics are accumulated in float32 over at most this much at a time (more passes
# over the images instead); float32 ones in one pass, in the array that becomes the result
ACCUMULATOR_BYTES = 1 << 30


class PaDiMMethod(FittedFeatureMethod):
    """Checkpoint: ``fitted.npz`` with the channel subset, mean [P, d], inverse covariance
    [P, d, d] and the count of images they are of (for main.py --mode update's running update);
    ``checkpoint.pdparams`` with the backbone, fingerprint and image size."""

    name = "padim"

    def _dims(self):
        total = sum(self.encoder.channels)
        dims = self.settings.feature_dims or default_dims(self.settings.backbone, total)
        if not 1 <= dims <= total:
            raise UserError(f"--feature_dims must be in 1..{total} for {self.settings.backbone}, got {dims}")
        return dims

    def fit_arrays(self, train_set):
        check_choice("stats_dtype", self.settings.stats_dtype, STATS_DTYPES)
        subset = channel_subset(self.encoder.channels, self._dims(), int(self.cfg["seed"]))
        embed = PaDiMEmbedding(self.encoder.channels, subset)
        dtype, dims = np.dtype(self.settings.stats_dtype), len(subset)
        positions = (self.image_size[0] // 4) * (self.image_size[1] // 4)  # the stride-4 grid
        passes = 1 if dtype == np.float32 else math.ceil(positions * dims * dims * 4 / ACCUMULATOR_BYTES)
        bounds = np.linspace(0, positions, passes + 1).astype(int)
        in_place = dtype == np.float32  # one pass; the accumulator becomes the result
        mean = np.empty((positions, dims), np.float32)
        inv_cov = None if in_place else zeros_outside_heap((positions, dims, dims), dtype)
        for k, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
            gaussian = GaussianAccumulator(slice(start, stop))
            desc = "extracting features of the training images" + (f" (pass {k + 1}/{passes})" if passes > 1 else "")
            for feats in self.features(train_set, desc):
                gaussian.add(embed(feats).flatten(2).numpy())
            mean[start:stop], part = gaussian.finish(out=None if in_place else inv_cov[start:stop])
            inv_cov = part if in_place else inv_cov
        return {"subset": subset, "mean": mean, "inv_cov": inv_cov, "count": np.array(len(train_set))}

    def updated_arrays(self, arrays, extra, good_set, fitted_count):
        """Each position's Gaussian updated with ``good_set`` (running mean and covariance)."""
        count = int(arrays["count"]) if "count" in arrays else fitted_count
        if count is None:
            raise UserError("this PaDiM checkpoint does not record how many images it was fitted on; "
                            "train it again to update it")
        embed = PaDiMEmbedding(self.encoder.channels, arrays["subset"])
        gaussian = GaussianAccumulator()
        for feats in self.features(good_set, "extracting features of the reviewed good images"):
            gaussian.add(embed(feats).flatten(2).numpy())
        mean, inv_cov = merge_gaussians(arrays["mean"], arrays["inv_cov"], count, gaussian)
        return {**arrays, "mean": mean, "inv_cov": inv_cov, "count": np.array(count + gaussian.n)}

    def describe(self):
        return {}

    def build_net(self, arrays, extra):
        embed = PaDiMEmbedding(self.encoder.channels, arrays["subset"])
        return PaDiMInference(self.encoder, embed, arrays["mean"], arrays["inv_cov"], self.image_size)
