"""EfficientAD's training recipe and checkpoints (Batzner et al., WACV 2024, arXiv 2303.14535).

Conventions shared by all parts:
- images enter as float32 RGB in [0, 1]; ImageNet mean/std normalisation happens inside the
  networks' callers (``imagenet_normalize``), before the teacher, student and autoencoder alike;
- the teacher's output is always used normalised by its per-channel training mean/std.
"""
from pathlib import Path

import numpy as np
import paddle

from adkit.core.errors import UserError
from adkit.core.io_utils import shipped_folder
from adkit.core.image_io import image_hw
from adkit.evaluate.evaluation import batches
from adkit.core.runtime import seed_everything
from adkit.train.onednn_layers import onednn_convolutions
from adkit.train.trainer import CHECKPOINT_FILE, Trainer
from adkit.train.training import batch_stream, make_adam, state_to_numpy, total_steps
from adkit.core.progress import log
from adkit.train.weights import load_into_layer, read_state_dict, safe_load, save_atomic

from ..base import AnomalyMethod
from ..graph_ops import imagenet_normalize

from .augment import PenaltyImages, random_color_jitter
from .inference import QUANTILE_NAMES, EfficientADInference
from .losses import (autoencoder_loss, hard_feature_loss, map_normalization_quantiles, penalty_loss,
                     student_ae_loss, teacher_channel_stats)
from .networks import PDN, TEACHER_CHANNELS, AutoEncoder, pdn_out_size, teacher_state_from_torch


MODEL_SIZES = {"efficientad_s": "small", "efficientad_m": "medium"}

# Teachers shipped with the project (made by --mode distill, see weights/README.md).
DEFAULT_TEACHER_DIR = Path(shipped_folder("weights"))


def default_teacher_path(size):
    """weights/teacher_<size>.pdparams if the project ships one for this PDN size, else None."""
    path = DEFAULT_TEACHER_DIR / f"teacher_{size}.pdparams"
    return path if path.is_file() else None


def _nets_state(layer):
    return state_to_numpy(layer.state_dict())


class EfficientADMethod(AnomalyMethod):
    """The paper's recipe (nelson1425/EfficientAD): batch 1, Adam lr 1e-4 wd 1e-5, lr x0.1 at
    95% of the steps, hard feature loss + optional penalty + AE and student-AE losses.

    Checkpoint folder: checkpoint.pdparams (adkit.train.trainer: the three nets, optimizer, scheduler,
    teacher mean/std) for --resume; the published {teacher,student,autoencoder}_{tmp,final}
    .pdparams role files; normalization.pdparams (teacher mean/std and, once training
    finished, the four map quantiles).
    """

    ROLES = ("teacher", "student", "autoencoder")

    def __init__(self, cfg):
        super().__init__(cfg)
        if cfg["model"] not in MODEL_SIZES:
            raise UserError(f"--model {cfg['model']}: not an EfficientAD model "
                            f"({', '.join(MODEL_SIZES)})")
        self.name = cfg["model"]
        self.size = MODEL_SIZES[cfg["model"]]
        height, width = image_hw(cfg["image_size"])
        seed_everything(cfg["seed"])  # initial weights depend on the seed only
        self.teacher = PDN(self.size, TEACHER_CHANNELS)
        self.student = PDN(self.size, 2 * TEACHER_CHANNELS)
        self.autoencoder = AutoEncoder((height, width), (pdn_out_size(height, self.size),
                                                         pdn_out_size(width, self.size)))
        for param in self.teacher.parameters():
            param.stop_gradient = True
        self.teacher.eval()
        self.normalization = None  # teacher_mean, teacher_std (+ quantiles when trained)
        self._teacher_graph = None  # the frozen teacher's forward in training (fit makes it)

    # -- training ------------------------------------------------------------------------

    def fit(self, train_set, val_set, ckpt_dir, resume=False):
        cfg, ckpt_dir = self.cfg, Path(ckpt_dir)
        if len(val_set) == 0:
            raise UserError("EfficientAD needs validation images to normalise its maps: use "
                            "--val_ratio > 0 with at least 2 training images")
        steps = total_steps(self.cfg, len(train_set), "paper: 70000 steps")
        penalty_dir = self.settings.penalty_dir
        penalty = PenaltyImages(penalty_dir, cfg["image_size"]) if penalty_dir else None
        optimizer, scheduler = self._make_optimizer(steps)
        trainer = Trainer(
            self.name, ckpt_dir / CHECKPOINT_FILE, self._nets(), ("student", "autoencoder"),
            optimizer, scheduler=scheduler, total=steps, seed=cfg["seed"],
            log_interval=cfg["log_interval"], save_interval=cfg["save_interval"],
            log_dir=cfg.get("log_dir"),
            on_save=lambda step: self._save_role_files(ckpt_dir, "tmp"))
        if resume:
            self.normalization = trainer.resume()["normalization"]
        else:
            self._load_teacher()
        self._teacher_graph = self.frozen_forward(self.teacher)  # the teacher's weights are final
        if not resume:
            batches = self._batches(train_set, "normalising the teacher on the training images")
            mean, std = teacher_channel_stats(self._teacher_graph, batches)
            self.normalization = {"teacher_mean": mean, "teacher_std": std}
        trainer.extra = {"normalization": self.normalization}
        if penalty is None:
            log.info("no --penalty_dir: training without the ImageNet penalty loss")

        def train_step(images, _step_seed):
            losses = self._train_step(images, penalty, optimizer)
            scheduler.step()
            return losses

        self.student.train()
        self.autoencoder.train()
        batch_size, seed = int(cfg["batch_size"]), int(cfg["seed"])
        with onednn_convolutions(self.student, self.autoencoder, on=self.trains_with_onednn()):
            trainer.run(lambda start: batch_stream(train_set, batch_size, seed, start), train_step)
        self.student.eval()
        self.autoencoder.eval()
        self._save_role_files(ckpt_dir, "final")
        self.normalization.update(self._validation_quantiles(val_set))
        save_atomic(self.normalization, ckpt_dir / "normalization.pdparams")

    def _nets(self):
        return {role: getattr(self, role) for role in self.ROLES}

    def _save_role_files(self, ckpt_dir, kind):
        """{teacher,student,autoencoder}_{tmp,final}.pdparams: the files users of the original
        scripts and the MMDetection port load."""
        for role in self.ROLES:
            save_atomic(_nets_state(getattr(self, role)), ckpt_dir / f"{role}_{kind}.pdparams")

    def _make_optimizer(self, steps):
        # nelson1425: StepLR(step_size=int(0.95 * steps), gamma=0.1), stepped once per step
        scheduler = paddle.optimizer.lr.MultiStepDecay(
            learning_rate=float(self.cfg["lr"]), milestones=[max(int(0.95 * steps), 1)],
            gamma=0.1)
        parameters = self.student.parameters() + self.autoencoder.parameters()
        optimizer = make_adam(parameters, scheduler,
                              weight_decay=self.settings.weight_decay)
        return optimizer, scheduler

    def _load_teacher(self):
        """--teacher_weights PATH, or 'none' for random init, or unset: the shipped default."""
        choice = self.settings.teacher_weights
        if choice is None:
            choice = default_teacher_path(self.size)
            if choice is None:
                log.warning("!!! EfficientAD: no default %s teacher is shipped and no "
                            "--teacher_weights was given: the teacher is RANDOM, so detection "
                            "will be far below the paper. Make one with `python main.py "
                            "--model %s --mode distill --data_dir FOLDER_OF_PHOTOS "
                            "--output_dir DIR` and pass DIR/teacher_%s.pdparams (or copy it to "
                            "%s; see weights/README.md), or pass nelson1425's teacher_%s.pth / "
                            "an anomalib teacher. !!!", self.size, self.name, self.size,
                            DEFAULT_TEACHER_DIR, self.size)
                return
            log.info("EfficientAD: default teacher %s (a small offline stand-in, below the "
                     "paper's teacher: see weights/README.md)", choice)
        elif str(choice).lower() == "none":
            log.warning("!!! EfficientAD: --teacher_weights none: the teacher is RANDOM; use "
                        "this only for tests and smoke runs. !!!")
            return
        state = teacher_state_from_torch(read_state_dict(choice), self.size, source=str(choice))
        load_into_layer(self.teacher, state, str(choice))

    def _train_step(self, images, penalty, optimizer):
        """One optimisation step; returns the losses as floats. Separate forward passes (as
        the reference) measured faster and lighter here than one pass on a stacked batch."""
        ae_images = np.stack([random_color_jitter(image) for image in images])
        x_st = imagenet_normalize(paddle.to_tensor(images))
        x_ae = imagenet_normalize(paddle.to_tensor(ae_images))
        with paddle.no_grad():  # the teacher sees both inputs in one run of its graph
            teacher_out = self._normalize_teacher(self._teacher_graph(paddle.concat([x_st, x_ae])))
            teacher_st, teacher_ae = paddle.split(teacher_out, 2)
        # each input needs one half of the student's output: compute only that half
        channels = teacher_st.shape[1]
        teacher_half, ae_half = (0, channels), (channels, 2 * channels)
        losses = {"hard": hard_feature_loss(teacher_st, self.student(x_st, teacher_half))}
        if penalty is not None:
            x_penalty = imagenet_normalize(paddle.to_tensor(penalty.sample(len(images))))
            losses["penalty"] = penalty_loss(self.student(x_penalty, teacher_half))
        ae_out = self.autoencoder(x_ae)
        losses["ae"] = autoencoder_loss(teacher_ae, ae_out)
        losses["stae"] = student_ae_loss(ae_out, self.student(x_ae, ae_half))
        total = paddle.add_n(list(losses.values()))
        optimizer.clear_grad()
        total.backward()
        optimizer.step()
        losses["total"] = total
        return {name: float(value) for name, value in losses.items()}

    def _normalize_teacher(self, teacher_out):
        mean = paddle.to_tensor(self.normalization["teacher_mean"]).reshape([1, -1, 1, 1])
        std = paddle.to_tensor(self.normalization["teacher_std"]).reshape([1, -1, 1, 1])
        return (teacher_out - mean) / std

    def _batches(self, dataset, desc):
        return batches(dataset, int(self.cfg.get("eval_batch_size") or 1), desc)

    def _validation_quantiles(self, val_set):
        net = self._inference_net(quantiles=None)
        local_maps, global_maps = [], []
        with paddle.no_grad():
            for images in self._batches(val_set, "normalising the maps on the validation images"):
                local_map, global_map = net.raw_maps(paddle.to_tensor(images))
                local_maps.append(local_map.numpy())
                global_maps.append(global_map.numpy())
        return map_normalization_quantiles(np.concatenate(local_maps),
                                           np.concatenate(global_maps))

    # -- checkpoints ---------------------------------------------------------------------

    def _load_weights(self, ckpt_dir, kind):
        for role in self.ROLES:
            path = ckpt_dir / f"{role}_{kind}.pdparams"
            if not path.is_file():
                raise UserError(f"{path}: not found (train EfficientAD into {ckpt_dir} first)")
            load_into_layer(getattr(self, role), read_state_dict(path), str(path))

    @staticmethod
    def _read_normalization(ckpt_dir):
        path = ckpt_dir / "normalization.pdparams"
        if not path.is_file():
            raise UserError(f"{path}: not found (train EfficientAD into {ckpt_dir} first)")
        return safe_load(path)

    # -- using a trained model -----------------------------------------------------------

    def load(self, ckpt_dir):
        ckpt_dir = Path(ckpt_dir)
        if all((ckpt_dir / f"{role}_final.pdparams").is_file() for role in self.ROLES):
            self._load_weights(ckpt_dir, "final")
        else:
            log.warning("%s: no final EfficientAD weights, using the last intermediate "
                        "checkpoint (*_tmp.pdparams)", ckpt_dir)
            self._load_weights(ckpt_dir, "tmp")
        self.normalization = self._read_normalization(ckpt_dir)
        missing = [name for name in QUANTILE_NAMES if name not in self.normalization]
        if missing:
            raise UserError(f"{ckpt_dir / 'normalization.pdparams'}: no map quantiles (training "
                            "did not finish); continue it with --mode train --resume")
        for role in self.ROLES:
            getattr(self, role).eval()

    def inference_net(self):
        if self.normalization is None:
            raise UserError("EfficientAD: no trained state; train or load a checkpoint first")
        return self._inference_net({name: self.normalization[name] for name in QUANTILE_NAMES})

    def _inference_net(self, quantiles):
        net = EfficientADInference(self.teacher, self.student, self.autoencoder,
                                   self.normalization["teacher_mean"],
                                   self.normalization["teacher_std"], quantiles)
        net.eval()
        return net
