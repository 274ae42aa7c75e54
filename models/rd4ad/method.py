"""RD4AD's training recipe (Adam lr 0.005, betas 0.5/0.999, batch 16, 200 epochs; the encoder
stays frozen) on the shared trainer, and loading a trained model."""
from pathlib import Path

import paddle

from adkit.core.errors import UserError
from adkit.core.image_io import image_hw
from adkit.train.trainer import CHECKPOINT_FILE, Trainer, check_resumable, read_checkpoint
from adkit.train.training import batch_stream, make_adam, set_state, total_steps

from ..backbones.encoders import (build_encoder, check_same_encoder, encoder_fingerprint,
                                  encoder_record)
from ..base import AnomalyMethod
from .networks import RD4ADInference, build_student, rd4ad_loss



class RD4ADMethod(AnomalyMethod):
    """Checkpoint: ``<ckpt_dir>/checkpoint.pdparams`` (adkit.train.trainer) with nets bottleneck and
    decoder; ``extra`` holds the backbone name, weights source and fingerprint, image size
    ([height, width]; a side in checkpoints written before non-square sizes)."""

    name = "rd4ad"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.encoder = self.bottleneck = self.decoder = None
        self.encoder_sha256 = None  # identifies the teacher weights the student was fit to
        self.image_size = image_hw(cfg["image_size"])

    def _build(self, backbone, weights, image_size):
        self.encoder = build_encoder(backbone, weights)
        self.encoder_sha256 = encoder_fingerprint(self.encoder)
        paddle.seed(int(self.cfg["seed"]))  # the student's initial weights depend on the seed
        self.bottleneck, self.decoder = build_student(backbone, self.encoder.channels)
        self.image_size = image_hw(image_size)

    # -- training ------------------------------------------------------------------------

    def fit(self, train_set, val_set, ckpt_dir, resume=False):
        cfg, settings = self.cfg, self.settings
        path = Path(ckpt_dir) / CHECKPOINT_FILE
        if resume:  # check the options before building anything
            check_resumable(path, self.name, {"backbone": settings.backbone, "image_size": cfg["image_size"]})
        self._build(settings.backbone, settings.backbone_weights, cfg["image_size"])
        # on the CPU a channels-last twin trains: oneDNN's NHWC convolutions, no reorders
        data_format = "NHWC" if self.trains_with_onednn() else "NCHW"
        nets = self._training_twins(settings.backbone, data_format)
        optimizer = make_adam(nets["bottleneck"].parameters() + nets["decoder"].parameters(),
                              float(cfg["lr"]), beta1=settings.beta1, beta2=settings.beta2)
        trainer = Trainer(
            self.name, path, nets, ("bottleneck", "decoder"), optimizer,
            total=total_steps(cfg, len(train_set), "paper: 200 epochs"), seed=cfg["seed"],
            log_interval=cfg["log_interval"], save_interval=cfg["save_interval"],
            log_dir=cfg.get("log_dir"),
            extra={**encoder_record(settings.backbone, settings.backbone_weights, self.encoder_sha256),
                   "image_size": list(self.image_size)})
        if resume:
            check_same_encoder(self.encoder_sha256, trainer.resume(), path, settings.backbone_weights)
        per_image = settings.loss_per_image
        bottleneck, decoder = trainer.data_parallel(nets["bottleneck"]), trainer.data_parallel(nets["decoder"])
        encoder = self.frozen_forward(self.encoder, channels_last=data_format == "NHWC")

        def train_step(images, _step_seed):
            enc = encoder(paddle.to_tensor(images))
            loss = rd4ad_loss(enc, decoder(bottleneck(enc)), per_image, data_format)
            trainer.optimise(loss)
            return {"total": float(loss)}

        for net in nets.values():
            net.train()
        batches = lambda start: batch_stream(train_set, int(cfg["batch_size"]), int(cfg["seed"]), start)  # noqa: E731
        try:
            trainer.run(batches, train_step)
        finally:  # the trained weights (also of an interrupted run) into the nets eval and export use
            if nets["bottleneck"] is not self.bottleneck:
                self.bottleneck.set_state_dict(nets["bottleneck"].state_dict())
                self.decoder.set_state_dict(nets["decoder"].state_dict())
            self.bottleneck.eval()
            self.decoder.eval()

    def _training_twins(self, backbone, data_format):
        """The nets training updates: the student itself in NCHW, else its channels-last twin
        (same parameters and state-dict names, copied from the student)."""
        if data_format == "NCHW":
            return {"bottleneck": self.bottleneck, "decoder": self.decoder}
        bottleneck, decoder = build_student(backbone, self.encoder.channels, data_format)
        bottleneck.set_state_dict(self.bottleneck.state_dict())
        decoder.set_state_dict(self.decoder.state_dict())
        return {"bottleneck": bottleneck, "decoder": decoder}

    # -- using a trained model -----------------------------------------------------------

    def load(self, ckpt_dir):
        nets, saved, path = _read_trained(Path(ckpt_dir))
        # the encoder is not stored: rebuild it from the same source (or the one given now)
        weights = self.settings.backbone_weights or saved["backbone_weights"]
        self._build(saved["backbone"], weights, saved["image_size"])
        check_same_encoder(self.encoder_sha256, saved, path, weights)
        set_state(self.bottleneck, nets["bottleneck"])
        set_state(self.decoder, nets["decoder"])
        self.bottleneck.eval()
        self.decoder.eval()

    def inference_net(self):
        if self.decoder is None:
            raise RuntimeError("RD4ADMethod: call fit() or load() before inference_net()")
        net = RD4ADInference(self.encoder, self.bottleneck, self.decoder, self.image_size)
        net.eval()  # Layer.eval() returns None on Paddle 2.6: never chain it
        return net


def _read_trained(ckpt_dir):
    """(nets, extra, path) from the checkpoint."""
    path = ckpt_dir / CHECKPOINT_FILE
    if not path.is_file():
        raise UserError(f"no trained rd4ad checkpoint in {ckpt_dir}: run --mode train first")
    state = read_checkpoint(path, "load", "")
    return state["nets"], state["extra"], path
