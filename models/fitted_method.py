"""Methods that fit statistics of a frozen backbone's features without training
(PatchCore's memory bank, PaDiM's Gaussians): the shared fit / load around them.

A subclass provides ``fit_arrays(train_set) -> {name: ndarray}`` (from ``self.encoder``),
``describe() -> dict`` (its settings stored with them), ``build_net(arrays, extra)`` and
``updated_arrays(arrays, extra, good_set, fitted_count)``: the arrays with more good images
learnt without a refit (main.py --mode update, from the inspectors' reviewed false alarms).
"""
import paddle

from adkit.core.errors import UserError
from adkit.core.image_io import image_hw
from adkit.train.fitted import load_fitted, save_fitted
from adkit.core.progress import LONG_PHASE_SECONDS, RateProbe, duration_text, log

from .backbones.encoders import build_encoder, check_same_encoder, encoder_fingerprint, encoder_record
from .base import AnomalyMethod


class FittedFeatureMethod(AnomalyMethod):

    def __init__(self, cfg):
        super().__init__(cfg)
        self.encoder = self.encoder_sha256 = self.net = None
        self.image_size = image_hw(cfg["image_size"])

    def _build_encoder(self, backbone, weights):
        self.encoder = build_encoder(backbone, weights)
        self.encoder_sha256 = encoder_fingerprint(self.encoder)

    def fit(self, train_set, val_set, ckpt_dir, resume=False):
        ignored = [f"--{o}" for o in ("steps", "epochs") if self.cfg.get(o)] + (["--resume"] if resume else [])
        if ignored:  # training options: say so rather than pretend
            log.info("%s is fitted without training: %s ignored", self.name, ", ".join(ignored))
        settings = self.settings
        paddle.seed(int(self.cfg["seed"]))
        self._build_encoder(settings.backbone, settings.backbone_weights)
        arrays = self.fit_arrays(train_set)
        extra = {**encoder_record(settings.backbone, settings.backbone_weights, self.encoder_sha256),
                 "image_size": list(self.image_size), **self.describe()}
        save_fitted(ckpt_dir, self.name, arrays, extra)
        self.net = self.build_net(arrays, extra)

    def load(self, ckpt_dir):
        arrays, saved = load_fitted(ckpt_dir, self.name)
        weights = self.settings.backbone_weights or saved["backbone_weights"]
        self._build_encoder(saved["backbone"], weights)
        check_same_encoder(self.encoder_sha256, saved, ckpt_dir, weights)
        self.image_size = image_hw(saved["image_size"])  # a side in checkpoints before [h, w]
        self.net = self.build_net(arrays, saved)

    def learn_good_images(self, ckpt_dir, good_set, fitted_count=None):
        """The checkpoint's arrays with ``good_set`` learnt too (``fitted_count``: how many
        images the checkpoint was fitted on, for one that does not record it); the net is
        rebuilt on them. Returns (arrays, extra) for ``save_fitted``. Call after ``load``."""
        arrays, extra = load_fitted(ckpt_dir, self.name)
        arrays = self.updated_arrays(arrays, extra, good_set, fitted_count)
        self.net = self.build_net(arrays, extra)
        return arrays, extra

    def inference_net(self):
        if self.net is None:
            raise RuntimeError(f"{type(self).__name__}: call fit() or load() before inference_net()")
        self.net.eval()  # Layer.eval() returns None on Paddle 2.6
        return self.net

    def features(self, train_set, desc):
        """Yield the encoder's [f4, f8, f16] (paddle tensors) batch by batch over ``train_set``;
        once its first batches are timed, log how long all of them take, when that is long,
        and what the fit does next."""
        from adkit.evaluate.evaluation import batches

        batch_size = int(self.cfg["batch_size"])
        rate = RateProbe(skip=batch_size, measure=2 * batch_size)
        with paddle.no_grad():
            for batch in batches(train_set, batch_size, desc):
                feats = self.encoder(paddle.to_tensor(batch))
                yield feats  # the caller's work on them is timed too
                seconds_per_image = rate.update(len(batch))
                if seconds_per_image is not None:
                    self._log_fit_estimate(seconds_per_image * len(train_set), len(train_set),
                                           getattr(train_set, "unit", "images"), feats)

    def _log_fit_estimate(self, extraction_seconds, count, unit, feats):
        if extraction_seconds >= LONG_PHASE_SECONDS:
            later = "".join(f"; then {phase}" for phase in self.later_fit_phases(count, feats))
            log.info("%s: the features of %d %s take about %s%s (each phase says how long it "
                     "has left as it goes)", self.name, count, unit, duration_text(extraction_seconds), later)

    def later_fit_phases(self, count, feats):
        """What the fit does after extracting the features of ``count`` images (``feats``: one
        batch's, for their shapes), in words, when it takes a while."""
        return []

    def fit_arrays(self, train_set):
        raise NotImplementedError

    def describe(self):
        raise NotImplementedError

    def build_net(self, arrays, extra):
        raise NotImplementedError

    def updated_arrays(self, arrays, extra, good_set, fitted_count):
        raise NotImplementedError


def check_choice(option, value, choices):
    if value not in choices:
        raise UserError(f"--{option} {value}: expected one of {', '.join(choices)}")
