"""STFPM's training recipe (SGD lr 0.4, momentum 0.9, weight decay 1e-4, batch 32, 100 epochs)
on the shared trainer, and loading a trained model."""
from pathlib import Path

import paddle

from adkit.core.image_io import image_hw
from adkit.train.trainer import CHECKPOINT_FILE, Trainer, check_resumable, read_checkpoint
from adkit.train.training import batch_stream, set_state, total_steps

from ..backbones.encoders import (build_encoder, check_same_encoder, encoder_fingerprint,
                                  encoder_record)
from ..base import AnomalyMethod
from .networks import STFPMInference, Student, stfpm_loss


class STFPMMethod(AnomalyMethod):
    """Checkpoint: ``<ckpt_dir>/checkpoint.pdparams`` (adkit.train.trainer) with the student; ``extra``
    holds the backbone, the teacher's weights source and fingerprint, the image size ([height,
    width]; a side in checkpoints written before non-square sizes)."""

    name = "stfpm"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.teacher = self.student = self.teacher_sha256 = None
        self.image_size = image_hw(cfg["image_size"])

    def _build(self, backbone, weights, image_size):
        self.teacher = build_encoder(backbone, weights)
        self.teacher_sha256 = encoder_fingerprint(self.teacher)
        paddle.seed(int(self.cfg["seed"]))  # the student's initial weights depend on the seed
        self.student = Student(backbone)
        self.image_size = image_hw(image_size)

    def fit(self, train_set, val_set, ckpt_dir, resume=False):
        cfg, settings = self.cfg, self.settings
        path = Path(ckpt_dir) / CHECKPOINT_FILE
        if resume:  # check the options before building anything
            check_resumable(path, self.name, {"backbone": settings.backbone, "image_size": cfg["image_size"]})
        self._build(settings.backbone, settings.backbone_weights, cfg["image_size"])
        optimizer = paddle.optimizer.Momentum(
            learning_rate=float(cfg["lr"]), momentum=settings.momentum,
            parameters=self.student.parameters(),
            weight_decay=paddle.regularizer.L2Decay(settings.weight_decay))
        trainer = Trainer(
            self.name, path, {"student": self.student}, ("student",), optimizer,
            total=total_steps(cfg, len(train_set), "paper: 100 epochs"), seed=cfg["seed"],
            log_interval=cfg["log_interval"], save_interval=cfg["save_interval"],
            log_dir=cfg.get("log_dir"),
            extra={**encoder_record(settings.backbone, settings.backbone_weights, self.teacher_sha256),
                   "image_size": list(self.image_size)})
        if resume:
            check_same_encoder(self.teacher_sha256, trainer.resume(), path, settings.backbone_weights)
        student = trainer.data_parallel(self.student)
        teacher = self.frozen_forward(self.teacher)

        def train_step(images, _step_seed):
            x = paddle.to_tensor(images)
            loss = stfpm_loss(teacher(x), student(x))
            trainer.optimise(loss)
            return {"total": float(loss)}

        self.student.train()
        batches = lambda start: batch_stream(train_set, int(cfg["batch_size"]), int(cfg["seed"]), start)  # noqa: E731
        trainer.run(batches, train_step)
        self.student.eval()

    def load(self, ckpt_dir):
        path = Path(ckpt_dir) / CHECKPOINT_FILE
        state = read_checkpoint(path, "load", "no trained stfpm model there: run --mode train first")
        saved = state["extra"]
        # the teacher is not stored: rebuild it from the same source (or the one given now)
        weights = self.settings.backbone_weights or saved["backbone_weights"]
        self._build(saved["backbone"], weights, saved["image_size"])
        check_same_encoder(self.teacher_sha256, saved, path, weights)
        set_state(self.student, state["nets"]["student"])
        self.student.eval()

    def inference_net(self):
        if self.student is None:
            raise RuntimeError("STFPMMethod: call fit() or load() before inference_net()")
        net = STFPMInference(self.teacher, self.student, self.image_size)
        net.eval()  # Layer.eval() returns None on Paddle 2.6
        return net
