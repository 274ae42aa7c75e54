"""Fitting PaDiM: one pass over the good images accumulates each position's Gaussian."""
import numpy as np

from adkit.errors import UserError

from ..fitted_method import FittedFeatureMethod, check_choice
from .gaussian import GaussianAccumulator
from .networks import PaDiMEmbedding, PaDiMInference, channel_subset, default_dims

STATS_DTYPES = ("float32", "float16")


class PaDiMMethod(FittedFeatureMethod):
    """Checkpoint: ``fitted.npz`` with the channel subset, mean [P, d] and inverse covariance
    [P, d, d]; ``checkpoint.pdparams`` with the backbone, fingerprint and image size."""

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
        gaussian = GaussianAccumulator()
        for feats in self.features(train_set, "padim features"):
            gaussian.add(embed(feats).flatten(2).numpy())
        mean, inv_cov = gaussian.finish(np.dtype(self.settings.stats_dtype))
        return {"subset": subset, "mean": mean, "inv_cov": inv_cov}

    def describe(self):
        return {}

    def build_net(self, arrays, extra):
        embed = PaDiMEmbedding(self.encoder.channels, arrays["subset"])
        return PaDiMInference(self.encoder, embed, arrays["mean"], arrays["inv_cov"], self.image_size)
