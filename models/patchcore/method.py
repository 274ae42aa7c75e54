"""Fitting PatchCore: embed every training patch, keep a coreset of them as the memory bank."""
import math
import time

import numpy as np

from adkit.core.errors import UserError
from adkit.core.progress import log

from ..fitted_method import FittedFeatureMethod, check_choice
from .coreset import greedy_coreset, random_projection
from .networks import PatchCoreInference, PatchEmbedding, embedding_dim

BANK_DTYPES = ("float32", "float16")


class PatchCoreMethod(FittedFeatureMethod):
    """Checkpoint: ``fitted.npz`` with the bank [M, D]; ``checkpoint.pdparams`` with the
    backbone, its fingerprint, the image size, D and b (adkit.train.fitted)."""

    name = "patchcore"

    def _check_settings(self):
        s = self.settings
        if not 0.0 < s.coreset_ratio <= 1.0:
            raise UserError(f"--coreset_ratio must be in (0, 1], got {s.coreset_ratio}")
        for option in ("embed_dim", "projection_dim", "neighbours"):
            if getattr(s, option) < 1:
                raise UserError(f"--{option} must be at least 1, got {getattr(s, option)}")
        check_choice("bank_dtype", s.bank_dtype, BANK_DTYPES)

    def fit_arrays(self, train_set):
        self._check_settings()
        s = self.settings
        dim = embedding_dim(self.encoder.channels, s.embed_dim)
        patches = self._patches(train_set, dim, "extracting features of the training images")
        return {"bank": self._coreset(patches).astype(s.bank_dtype)}

    def updated_arrays(self, arrays, extra, good_set, fitted_count):
        """The bank with the coreset of ``good_set``'s patches added (the same ratio as fit)."""
        self._check_settings()
        patches = self._patches(good_set, int(extra["embed_dim"]), "extracting features of the reviewed good images")
        bank = arrays["bank"]
        return {**arrays, "bank": np.concatenate([bank, self._coreset(patches).astype(bank.dtype)])}

    def _patches(self, dataset, dim, desc):
        """Every patch embedding [N*h*w, D] of ``dataset``."""
        embed = PatchEmbedding(self.encoder.channels, dim)
        patches = []
        for feats in self.features(dataset, desc):
            emb = embed(feats)
            patches.append(emb.transpose([0, 2, 3, 1]).reshape([-1, emb.shape[1]]).numpy())
        return np.concatenate(patches)

    def _coreset(self, patches):
        """The --coreset_ratio of ``patches`` chosen greedily (all of them at ratio 1)."""
        s = self.settings
        keep = max(1, math.ceil(s.coreset_ratio * len(patches)))
        if keep < len(patches):
            log.info("patchcore: choosing %d of %d patches (coreset %.3g, %d-dim projection)",
                     keep, len(patches), s.coreset_ratio, s.projection_dim)
            start = time.perf_counter()
            chosen = greedy_coreset(random_projection(patches, s.projection_dim, int(self.cfg["seed"])),
                                    keep, int(self.cfg["seed"]))
            patches = patches[np.sort(chosen)]
            log.info("patchcore: coreset chosen in %.1f s", time.perf_counter() - start)
        return patches

    def later_fit_phases(self, count, feats):
        s = self.settings
        patches = count * feats[1].shape[2] * feats[1].shape[3]  # the stride-8 grid's
        keep = math.ceil(s.coreset_ratio * patches)
        return [f"choosing {keep} of {patches} patches for the memory bank"] if keep < patches else []

    def describe(self):
        return {"embed_dim": embedding_dim(self.encoder.channels, self.settings.embed_dim),
                "neighbours": int(self.settings.neighbours)}

    def build_net(self, arrays, extra):
        embed = PatchEmbedding(self.encoder.channels, int(extra["embed_dim"]))
        return PatchCoreInference(self.encoder, embed, arrays["bank"], self.image_size,
                                  int(extra["neighbours"]))
