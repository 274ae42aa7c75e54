"""RD4AD's training recipe (Adam, batch 16, 200 epochs) and its checkpoint.
"""
import itertools
from pathlib import Path

import paddle

from adkit.errors import UserError
from adkit.training import (batch_stream, load_train_state, log, make_adam, optimizer_state,
                            progress, restore_optimizer, save_train_state, seed_step, set_state,
                            state_to_numpy, total_steps)

from ..backbones.encoders import build_encoder, encoder_fingerprint
from ..base import AnomalyMethod

from .networks import RD4ADInference, build_student, rd4ad_loss


CHECKPOINT_NAME = "last.pdparams"

# cfg keys that define the trained model; stored in the checkpoint so it can be rebuilt.
MODEL_KEYS = ("backbone", "backbone_weights", "image_size", "loss_per_image", "lr", "beta1",
              "beta2", "batch_size", "steps", "epochs", "seed")

class RD4ADMethod(AnomalyMethod):
    """The official recipe: Adam(lr 0.005, betas 0.5/0.999) on OCBE + decoder, batch 16; the
    encoder stays frozen. Checkpoint: ``<ckpt_dir>/last.pdparams`` (student weights, optimizer,
    step, backbone name/weights source/fingerprint, validation image scores)."""

    name = "rd4ad"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.encoder = self.bottleneck = self.decoder = None
        self.encoder_sha256 = None  # identifies the teacher weights the student was fit to
        self.image_size = int(cfg["image_size"])

    # -- building ------------------------------------------------------------------------

    def _build(self, backbone, weights, image_size):
        self.encoder = build_encoder(backbone, weights)
        self.encoder_sha256 = encoder_fingerprint(self.encoder)
        paddle.seed(int(self.cfg["seed"]))  # the student's initial weights depend on the seed
        self.bottleneck, self.decoder = build_student(backbone, self.encoder.channels)
        self.image_size = int(image_size)

    def _student(self):
        return {"bottleneck": self.bottleneck, "decoder": self.decoder}

    # -- training ------------------------------------------------------------------------

    def fit(self, train_set, val_set, ckpt_dir, resume=False):
        cfg = self.cfg
        path = Path(ckpt_dir) / CHECKPOINT_NAME
        saved = self._checkpoint_to_resume(path) if resume else None
        self._build(cfg["backbone"], cfg["backbone_weights"], cfg["image_size"])
        optimizer = make_adam(self.bottleneck.parameters() + self.decoder.parameters(),
                              float(cfg.get("lr") or 0.005), beta1=float(cfg.get("beta1", 0.5)),
                              beta2=float(cfg.get("beta2", 0.999)))
        total = total_steps(self.cfg, len(train_set), "paper: 200 epochs")
        start = 0
        if saved is not None:
            self._check_same_encoder(saved, path, cfg["backbone_weights"])
            set_state(self.bottleneck, saved["bottleneck"])
            set_state(self.decoder, saved["decoder"])
            restore_optimizer(optimizer, saved["optimizer"], self._student())
            start = int(saved["step"])
            log.info("rd4ad: resuming at step %d of %d", start, total)
        self._train(train_set, optimizer, start, total, path)
        self._write_checkpoint(path, max(start, total), optimizer)

    def _checkpoint_to_resume(self, path):
        if not path.is_file():
            raise UserError(f"--resume: no rd4ad checkpoint {path} to resume from")
        saved = load_train_state(path)
        for key in ("backbone", "image_size"):
            if saved[key] != self.cfg[key]:
                raise UserError(f"{path}: trained with --{key} {saved[key]}, cannot resume with "
                                f"--{key} {self.cfg[key]}")
        return saved

    def _train(self, train_set, optimizer, start, total, path):
        cfg = self.cfg
        seed, batch_size = int(cfg["seed"]), int(cfg["batch_size"])
        per_image = bool(cfg.get("loss_per_image", False))
        log_interval, save_interval = int(cfg["log_interval"]), int(cfg["save_interval"])
        self.bottleneck.train()
        self.decoder.train()
        stream = batch_stream(train_set, batch_size, seed, start_step=start)
        bar = progress(total=total, initial=start, desc="rd4ad train")
        for step, images in itertools.islice(stream, max(total - start, 0)):
            seed_step(seed, step)
            x = paddle.to_tensor(images)
            with paddle.no_grad():
                enc = self.encoder(x)
            loss = rd4ad_loss(enc, self.decoder(self.bottleneck(enc)), per_image)
            optimizer.clear_grad()
            loss.backward()
            optimizer.step()
            done, loss_value = step + 1, float(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
            if done % log_interval == 0 or done == total:
                log.info("rd4ad step %d/%d loss %.5f", done, total, loss_value)
            if done % save_interval == 0 and done < total:
                self._write_checkpoint(path, done, optimizer)
        bar.close()
        self.bottleneck.eval()
        self.decoder.eval()

    # -- checkpoint ----------------------------------------------------------------------

    def _write_checkpoint(self, path, step, optimizer):
        state = {
            "step": int(step),
            "bottleneck": state_to_numpy(self.bottleneck.state_dict()),
            "decoder": state_to_numpy(self.decoder.state_dict()),
            "optimizer": optimizer_state(optimizer, self._student()),
            "backbone": self.cfg["backbone"],
            "backbone_weights": self.cfg["backbone_weights"] or "auto",
            "encoder_sha256": self.encoder_sha256,
            "image_size": self.image_size,
            "config": {key: self.cfg.get(key) for key in MODEL_KEYS},
        }
        save_train_state(path, state)

    @staticmethod
    def _read_checkpoint(path):
        if not path.is_file():
            raise UserError(f"no trained rd4ad checkpoint in {path.parent}: "
                            "run --mode train first")
        return load_train_state(path)

    def _check_same_encoder(self, saved, path, weights):
        if self.encoder_sha256 != saved["encoder_sha256"]:
            raise UserError(f"{path}: the {saved['backbone']} weights from {weights or 'auto'!r} "
                            "differ from the ones this model was trained with "
                            f"({saved['backbone_weights']!r}); pass that file with "
                            "--backbone_weights")

    def load(self, ckpt_dir):
        path = Path(ckpt_dir) / CHECKPOINT_NAME
        saved = self._read_checkpoint(path)
        # the encoder is not stored: rebuild it from the same source (or the one given now)
        weights = self.cfg.get("backbone_weights") or saved["backbone_weights"]
        self._build(saved["backbone"], weights, saved["image_size"])
        self._check_same_encoder(saved, path, weights)
        set_state(self.bottleneck, saved["bottleneck"])
        set_state(self.decoder, saved["decoder"])
        self.bottleneck.eval()
        self.decoder.eval()

    def inference_net(self):
        if self.decoder is None:
            raise RuntimeError("RD4ADMethod: call fit() or load() before inference_net()")
        return RD4ADInference(self.encoder, self.bottleneck, self.decoder,
                              self.image_size).eval()
