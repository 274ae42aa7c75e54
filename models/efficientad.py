"""EfficientAD (Batzner et al., WACV 2024, arXiv 2303.14535): networks, losses, maps, recipe.

Read top to bottom like the paper: patch description networks (PDN) for teacher and student,
the autoencoder, the four losses, teacher normalisation, map normalisation, the inference
network that every mode (eval, infer, export) runs, and the training method.

Conventions shared by all parts:
- images enter as float32 RGB in [0, 1]; ImageNet mean/std normalisation happens here
  (``imagenet_normalize``), before the teacher, student and autoencoder alike;
- the teacher's output is always used normalised by its per-channel training mean/std;
- the student has twice the teacher's channels: the first half imitates the teacher, the
  second half imitates the autoencoder.
"""
import itertools
import math
from pathlib import Path

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from adkit.errors import UserError
from adkit.runtime import seed_everything
from adkit.training import (batch_stream, load_train_state, log, make_adam, optimizer_state,
                            progress, restore_optimizer, save_train_state, seed_step, state_to_numpy,
                            total_steps)
from adkit.weights import load_into_layer, read_state_dict, safe_load, save_atomic
from datasets.image_io import find_images, read_rgb, resize_rgb, to_chw_float

from .base import AnomalyMethod
from .graph_ops import (bilinear_resize, imagenet_normalize, interpolation_matrix,
                        separable_map)

TEACHER_CHANNELS = 384
MAP_PADDING = 4  # the unpadded PDN loses this many pixels per side (in map units) at 256 px
QUANTILE_NAMES = ("q_st_start", "q_st_end", "q_ae_start", "q_ae_end")

# PDN layers in forward order: ("conv", width, kernel, padding in the padded variant) or
# ("pool",). width None = the network's out_channels. ReLU follows every conv but the last.
_PDN_LAYERS = {
    "small": (("conv", 128, 4, 3), ("pool",), ("conv", 256, 4, 3), ("pool",),
              ("conv", 256, 3, 1), ("conv", None, 4, 0)),
    "medium": (("conv", 256, 4, 3), ("pool",), ("conv", 512, 4, 3), ("pool",),
               ("conv", 512, 1, 0), ("conv", 512, 3, 1), ("conv", None, 4, 0),
               ("conv", None, 1, 0)),
}
MODEL_SIZES = {"efficientad_s": "small", "efficientad_m": "medium"}
# Teachers shipped with the project (made by --mode distill, see weights/README.md).
DEFAULT_TEACHER_DIR = Path(__file__).resolve().parent.parent / "weights"


def default_teacher_path(size):
    """weights/teacher_<size>.pdparams if the project ships one for this PDN size, else None."""
    path = DEFAULT_TEACHER_DIR / f"teacher_{size}.pdparams"
    return path if path.is_file() else None


def _conv(in_channels, out_channels, kernel, stride=1, padding=0):
    """Conv2D initialised as torch's default (uniform +-1/sqrt(fan_in) for weight and bias).

    Paddle's default (Kaiming normal, zero bias) starts the unnormalised PDN/AE stacks at a
    different scale than the reference implementation; training is meant to match it.
    """
    bound = 1.0 / math.sqrt(in_channels * kernel * kernel)
    init = nn.initializer.Uniform(-bound, bound)
    return nn.Conv2D(in_channels, out_channels, kernel, stride=stride, padding=padding,
                     weight_attr=paddle.ParamAttr(initializer=init),
                     bias_attr=paddle.ParamAttr(initializer=init))


def _pdn_layers(size):
    if size not in _PDN_LAYERS:
        raise UserError(f"PDN size must be one of {', '.join(_PDN_LAYERS)}, got {size!r}")
    return _PDN_LAYERS[size]


def pdn_out_size(image_size, size="small", padding=False):
    """Side of the PDN feature map for a square input (256 -> 56 unpadded, 64 padded)."""
    side = image_size
    for layer in _pdn_layers(size):
        if layer[0] == "conv":
            pad = layer[3] if padding else 0
            side = side + 2 * pad - layer[2] + 1
        else:
            side = (side + 2 * (1 if padding else 0) - 2) // 2 + 1
        if side < 1:
            raise UserError(f"--image_size {image_size} is too small for the PDN")
    return side


class PDN(nn.Layer):
    """Patch description network, PDN-S (``size='small'``) or PDN-M (``size='medium'``).

    Convs are named conv1..conv4 (S) / conv1..conv6 (M), pools avgpool1/avgpool2, as in
    anomalib. ``padding=True`` is the variant used to distil the teacher (convs padded as in
    the table, pools by 1, padding counted in the average as torch does).
    """

    def __init__(self, size="small", out_channels=TEACHER_CHANNELS, padding=False):
        super().__init__()
        layers = _pdn_layers(size)
        n_convs = sum(layer[0] == "conv" for layer in layers)
        order = []  # (sublayer name, relu after it)
        in_channels, n_seen_convs, n_seen_pools = 3, 0, 0
        for layer in layers:
            if layer[0] == "conv":
                _, width, kernel, pad = layer
                width = width or out_channels
                n_seen_convs += 1
                name = f"conv{n_seen_convs}"
                setattr(self, name, _conv(in_channels, width, kernel,
                                          padding=pad if padding else 0))
                order.append((name, n_seen_convs < n_convs))
                in_channels = width
            else:
                n_seen_pools += 1
                name = f"avgpool{n_seen_pools}"
                setattr(self, name, nn.AvgPool2D(2, stride=2, padding=1 if padding else 0,
                                                 exclusive=False))
                order.append((name, False))
        self._order = tuple(order)

    def forward(self, x):
        for name, relu in self._order:
            x = getattr(self, name)(x)
            if relu:
                x = F.relu(x)
        return x


def _nelson_conv_indices(size):
    """Index of each conv in nelson1425's nn.Sequential (a ReLU after all convs but the last)."""
    layers = _pdn_layers(size)
    n_convs = sum(layer[0] == "conv" for layer in layers)
    indices, position = [], 0
    for layer in layers:
        if layer[0] == "conv":
            indices.append(position)
            position += 2 if len(indices) < n_convs else 1
        else:
            position += 1
    return indices


def teacher_state_from_torch(state, size, source="teacher weights"):
    """Rename a public teacher state dict to this module's PDN names (conv weights are
    identical in torch and paddle, so only names change).

    Accepts nelson1425/EfficientAD ``teacher_small.pth``/``teacher_medium.pth`` (nn.Sequential
    indices: small 0,3,6,8; medium 0,3,6,8,10,12) and anomalib's named layout (conv1..convN,
    which is ours). Raises UserError naming ``source`` when neither layout matches ``size``.
    """
    n_convs = len(_nelson_conv_indices(size))
    ours = [f"conv{i + 1}.{p}" for i in range(n_convs) for p in ("weight", "bias")]
    if set(state) == set(ours):
        return dict(state)
    nelson = {f"{index}.{p}": f"conv{i + 1}.{p}"
              for i, index in enumerate(_nelson_conv_indices(size)) for p in ("weight", "bias")}
    if set(state) == set(nelson):
        return {nelson[key]: value for key, value in state.items()}
    found = ", ".join(sorted(state)[:4]) + (" ..." if len(state) > 4 else "")
    raise UserError(f"{source}: not a PDN-{size} teacher state dict in nelson1425 "
                    f"(teacher_{size}.pth: '0.weight', '3.weight', ...) or anomalib layout "
                    f"('conv1.weight', ...); found keys {found}")


def autoencoder_upsample_sizes(image_size):
    """The decoder's six bilinear upsample sizes: the paper's (3, 8, 15, 32, 63, 127) at 256 px,
    scaled by image_size / 256 (rounded half up) for other sizes."""
    scale = image_size / 256
    return tuple(max(1, int(s * scale + 0.5)) for s in (3, 8, 15, 32, 63, 127))


class AutoEncoder(nn.Layer):
    """The EfficientAD autoencoder: 6 strided convs to a 64x1x1 code, then bilinear upsampling
    and convs back to a 384-channel map of the PDN's size.

    At image_size 256 this is exactly the paper's network (final encoder kernel 8, upsample
    sizes 3..127, output 56x56). Other sizes: the final encoder kernel is image_size // 32 (so
    the code stays 1x1) and the upsample sizes scale with image_size / 256.
    """

    def __init__(self, image_size=256, out_size=None, out_channels=TEACHER_CHANNELS):
        super().__init__()
        if image_size < 32:
            raise UserError(f"--image_size {image_size} is too small for the autoencoder")
        self.out_size = out_size or pdn_out_size(image_size)
        self.upsample_sizes = autoencoder_upsample_sizes(image_size)
        widths = (3, 32, 32, 64, 64, 64)
        for i in range(5):
            setattr(self, f"enconv{i + 1}", _conv(widths[i], widths[i + 1], 4, 2, 1))
        self.enconv6 = _conv(64, 64, image_size // 32)
        for i in range(6):
            setattr(self, f"deconv{i + 1}", _conv(64, 64, 4, 1, 2))
        self.deconv7 = _conv(64, 64, 3, 1, 1)
        self.deconv8 = _conv(64, out_channels, 3, 1, 1)
        self.dropout = nn.Dropout(0.2)

    def forward(self, x):
        for i in range(1, 6):
            x = F.relu(getattr(self, f"enconv{i}")(x))
        x = self.enconv6(x)
        for i, side in enumerate(self.upsample_sizes):
            x = bilinear_resize(x, [side, side])
            x = self.dropout(F.relu(getattr(self, f"deconv{i + 1}")(x)))
        x = bilinear_resize(x, [self.out_size, self.out_size])
        return self.deconv8(F.relu(self.deconv7(x)))


# ----------------------------------------------------------------------------------- losses

def quantile_linear(values, q):
    """torch.quantile(values, q) (linear interpolation between order statistics), exact.

    Only the two order statistics around rank q*(n-1) are needed, so a top-k from the nearer
    end replaces a full sort (1.2M values: ~30 ms and ~11 MB instead of ~150 ms and ~43 MB).
    The rank is computed in float64, as numpy does.
    """
    flat = values.reshape([-1])
    n = flat.shape[0]
    position = q * (n - 1)
    below = int(math.floor(position))
    above = min(below + 1, n - 1)
    if below >= n // 2:  # the two ranks are among the largest: take them from the top
        top = paddle.topk(flat, n - below, largest=True)[0]
        low_value, high_value = top[n - below - 1], top[n - above - 1]
    else:
        bottom = paddle.topk(flat, above + 1, largest=False)[0]
        low_value, high_value = bottom[below], bottom[above]
    return low_value + (position - below) * (high_value - low_value)


def hard_feature_loss(teacher_out, student_out, q=0.999):
    """Mean of the squared teacher-student differences at or above their q-quantile."""
    distance = (teacher_out - student_out[:, :teacher_out.shape[1]]) ** 2
    with paddle.no_grad():
        hard = (distance >= quantile_linear(distance.detach(), q)).astype(distance.dtype)
    return (distance * hard).sum() / hard.sum()


def penalty_loss(student_out):
    """Keeps the student's teacher half from imitating the teacher on unrelated images."""
    return paddle.mean(student_out[:, :student_out.shape[1] // 2] ** 2)


def autoencoder_loss(teacher_out, ae_out):
    return paddle.mean((teacher_out - ae_out) ** 2)


def student_ae_loss(ae_out, student_out):
    return paddle.mean((ae_out - student_out[:, ae_out.shape[1]:]) ** 2)


# ----------------------------------------------------------------------------- normalisation

def teacher_channel_stats(teacher, images_iter):
    """Per-channel mean and std of the teacher's output over all images and positions.

    ``images_iter`` yields float32 [B,3,H,W] RGB in [0,1]. The reference computes the mean of
    per-image channel means, then the std as the sqrt of the mean of per-image mean squared
    deviations from that mean; with equal-sized images that is exactly the population
    mean/std over all positions of all images, which is computed here in one pass (per-batch
    float64 mean and sum of squares combined with Chan's update, so no cancellation).
    Returns two float32 arrays [C].
    """
    count, mean, m2 = 0, None, None
    with paddle.no_grad():
        for images in images_iter:
            out = teacher(imagenet_normalize(paddle.to_tensor(images, dtype="float32")))
            out = out.numpy().astype(np.float64)
            values = out.transpose(1, 0, 2, 3).reshape(out.shape[1], -1)
            batch_count, batch_mean = values.shape[1], values.mean(axis=1)
            batch_m2 = ((values - batch_mean[:, None]) ** 2).sum(axis=1)
            if count == 0:
                count, mean, m2 = batch_count, batch_mean, batch_m2
                continue
            delta, total = batch_mean - mean, count + batch_count
            mean = mean + delta * batch_count / total
            m2 = m2 + batch_m2 + delta ** 2 * count * batch_count / total
            count = total
    if count == 0:
        raise ValueError("teacher_channel_stats needs at least one image")
    return mean.astype(np.float32), np.sqrt(m2 / count).astype(np.float32)


def map_normalization_quantiles(local_maps, global_maps):
    """The 0.9 and 0.995 quantiles of the raw validation maps (numpy linear = torch's)."""
    local_maps = np.asarray(local_maps, dtype=np.float64).ravel()
    global_maps = np.asarray(global_maps, dtype=np.float64).ravel()
    return {"q_st_start": float(np.quantile(local_maps, 0.9)),
            "q_st_end": float(np.quantile(local_maps, 0.995)),
            "q_ae_start": float(np.quantile(global_maps, 0.9)),
            "q_ae_end": float(np.quantile(global_maps, 0.995))}


def _padded_resize_matrix(n_in, n_out):
    """[n_out, n_in]: zero-pad by MAP_PADDING on both sides, then resize bilinearly. The
    padded entries are zeros, so the padding is just the interpolation matrix without its
    first and last MAP_PADDING columns (one op fewer in the exported graph)."""
    return interpolation_matrix(n_in + 2 * MAP_PADDING, n_out, False)[:, MAP_PADDING:-MAP_PADDING]


class EfficientADInference(nn.Layer):
    """The anomaly map, for every mode: x [B,3,H,W] RGB in [0,1] -> (map [B,1,H,W], score [B]).

    local = mean_c (T - S[:C])^2, global = mean_c (AE - S[C:])^2 (T normalised by the teacher
    mean/std), each mapped by 0.1 * (m - q_start) / (q_end - q_start), averaged, padded by 4
    with zeros and resized bilinearly to the input; score = max of the map. ``raw_maps`` gives
    the unnormalised maps, from which the quantiles are computed. Quantiles passed as None
    stay NaN until ``set_quantiles``, so a forgotten calibration cannot pass unnoticed.
    """

    def __init__(self, teacher, student, autoencoder, teacher_mean, teacher_std,
                 quantiles=None):
        super().__init__()
        self.teacher, self.student, self.autoencoder = teacher, student, autoencoder
        for name, value in (("teacher_mean", teacher_mean), ("teacher_std", teacher_std)):
            self.register_buffer(name, paddle.to_tensor(
                np.asarray(value, dtype=np.float32).reshape([1, -1, 1, 1])))
        for name in QUANTILE_NAMES:
            self.register_buffer(name, paddle.full([1], float("nan"), dtype="float32"))
        if quantiles is not None:
            self.set_quantiles(quantiles)

    def set_quantiles(self, quantiles):
        for name in QUANTILE_NAMES:
            getattr(self, name).set_value(np.full([1], quantiles[name], dtype=np.float32))

    def raw_maps(self, x):
        """(local, global) unnormalised maps [B,1,h,w] at the PDN's resolution."""
        x = imagenet_normalize(x)
        teacher_out = (self.teacher(x) - self.teacher_mean) / self.teacher_std
        student_out = self.student(x)
        ae_out = self.autoencoder(x)
        channels = teacher_out.shape[1]
        # paddle.square, not ** 2: the pow op has no oneDNN kernel (~8% of EfficientAD-S time)
        local_map = paddle.mean(paddle.square(teacher_out - student_out[:, :channels]), axis=1,
                                keepdim=True)
        global_map = paddle.mean(paddle.square(ae_out - student_out[:, channels:]), axis=1,
                                 keepdim=True)
        return local_map, global_map

    def forward(self, x):
        local_map, global_map = self.raw_maps(x)
        local_map = 0.1 * (local_map - self.q_st_start) / (self.q_st_end - self.q_st_start)
        global_map = 0.1 * (global_map - self.q_ae_start) / (self.q_ae_end - self.q_ae_start)
        anomaly_map = separable_map(0.5 * local_map + 0.5 * global_map,
                                    _padded_resize_matrix(local_map.shape[2], x.shape[2]),
                                    _padded_resize_matrix(local_map.shape[3], x.shape[3]))
        return anomaly_map, paddle.max(anomaly_map.flatten(1), axis=1)


# ------------------------------------------------------------------------------ augmentation

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32).reshape(3, 1, 1)  # ITU-R 601, as PIL


def _grayscale(image):
    return (image * _LUMA).sum(axis=0, keepdims=True)


def color_jitter(image, kind, factor):
    """One of torchvision's ColorJitter adjustments on a float [3,H,W] image in [0,1]:
    kind 0 brightness (scale), 1 contrast (blend with the mean gray level), 2 saturation
    (blend with the per-pixel gray image); clipped to [0,1]."""
    if kind == 0:
        adjusted = image * factor
    elif kind == 1:
        adjusted = factor * image + (1 - factor) * _grayscale(image).mean()
    else:
        adjusted = factor * image + (1 - factor) * _grayscale(image)
    return np.clip(adjusted, 0.0, 1.0).astype(np.float32)


def random_color_jitter(image):
    """The paper's AE augmentation as nelson1425 implements it: ONE of brightness, contrast,
    saturation chosen uniformly, factor uniform in [0.8, 1.2] (numpy's global RNG, which
    seed_step re-seeds every step)."""
    return color_jitter(image, np.random.randint(3), np.random.uniform(0.8, 1.2))


class PenaltyImages:
    """Generic images (e.g. ImageNet train) for the penalty loss, prepared as the reference:
    resize to 2*image_size, grayscale with probability 0.3, centre crop image_size."""

    def __init__(self, folder, image_size):
        self.paths = find_images(folder, "--penalty_dir")
        self.image_size = image_size

    def sample(self, count):
        """``count`` random images as float32 [count,3,S,S] in [0,1] (numpy's global RNG)."""
        return np.stack([self._prepare(self.paths[np.random.randint(len(self.paths))])
                         for _ in range(count)])

    def _prepare(self, path):
        image = to_chw_float(resize_rgb(read_rgb(path), 2 * self.image_size))
        if np.random.rand() < 0.3:
            image = np.repeat(_grayscale(image), 3, axis=0)
        top = int(round(self.image_size / 2.0))  # torchvision CenterCrop's offset
        return image[:, top:top + self.image_size, top:top + self.image_size]


# ---------------------------------------------------------------------------------- method

def _nets_state(layer):
    return state_to_numpy(layer.state_dict())


class EfficientADMethod(AnomalyMethod):
    """The paper's recipe (nelson1425/EfficientAD): batch 1, Adam lr 1e-4 wd 1e-5, lr x0.1 at
    95% of the steps, hard feature loss + optional penalty + AE and student-AE losses.

    Checkpoint folder: {teacher,student,autoencoder}_{tmp,final}.pdparams, train_state.pdparams
    (step, optimizer, scheduler) for --resume, normalization.pdparams (teacher mean/std, and
    once training finished the four map quantiles).
    """

    ROLES = ("teacher", "student", "autoencoder")

    def __init__(self, cfg):
        super().__init__(cfg)
        if cfg["model"] not in MODEL_SIZES:
            raise UserError(f"--model {cfg['model']}: not an EfficientAD model "
                            f"({', '.join(MODEL_SIZES)})")
        self.name = cfg["model"]
        self.size = MODEL_SIZES[cfg["model"]]
        image_size = int(cfg["image_size"])
        seed_everything(cfg["seed"])  # initial weights depend on the seed only
        self.teacher = PDN(self.size, TEACHER_CHANNELS)
        self.student = PDN(self.size, 2 * TEACHER_CHANNELS)
        self.autoencoder = AutoEncoder(image_size, pdn_out_size(image_size, self.size))
        for param in self.teacher.parameters():
            param.stop_gradient = True
        self.teacher.eval()
        self.normalization = None  # teacher_mean, teacher_std (+ quantiles when trained)

    # -- training ------------------------------------------------------------------------

    def fit(self, train_set, val_set, ckpt_dir, resume=False):
        cfg, ckpt_dir = self.cfg, Path(ckpt_dir)
        if len(val_set) == 0:
            raise UserError("EfficientAD needs validation images to normalise its maps: use "
                            "--val_ratio > 0 with at least 2 training images")
        steps = total_steps(self.cfg, len(train_set), "paper: 70000 steps")
        penalty = PenaltyImages(cfg["penalty_dir"], int(cfg["image_size"])) \
            if cfg.get("penalty_dir") else None
        optimizer, scheduler = self._make_optimizer(steps)
        if resume:
            start_step = self._restore(ckpt_dir, optimizer, scheduler)
            log.info("resuming %s at step %d of %d", self.name, start_step, steps)
        else:
            start_step = 0
            self._load_teacher()
            mean, std = teacher_channel_stats(self.teacher, self._batches(train_set))
            self.normalization = {"teacher_mean": mean, "teacher_std": std}
            save_atomic(self.normalization, ckpt_dir / "normalization.pdparams")
        if penalty is None:
            log.info("no --penalty_dir: training without the ImageNet penalty loss")

        self.student.train()
        self.autoencoder.train()
        batch_size, seed = int(cfg["batch_size"]), int(cfg["seed"])
        stream = batch_stream(train_set, batch_size, seed, start_step)
        bar = progress(total=steps, initial=start_step, desc=f"{self.name} train")
        for step, images in itertools.islice(stream, max(steps - start_step, 0)):
            seed_step(seed, step)
            losses = self._train_step(images, penalty, optimizer)
            scheduler.step()
            done = step + 1
            bar.update(1)
            if done % int(cfg["log_interval"]) == 0 or done == steps:
                bar.set_postfix(loss=f"{losses['total']:.4f}")
                log.info("step %d/%d lr %.2e %s", done, steps, optimizer.get_lr(),
                         " ".join(f"{k} {v:.5f}" for k, v in losses.items()))
            if done % int(cfg["save_interval"]) == 0 and done < steps:
                self._save_checkpoint(ckpt_dir, done, optimizer, scheduler)
        bar.close()
        self._save_checkpoint(ckpt_dir, steps, optimizer, scheduler)
        self.student.eval()
        self.autoencoder.eval()
        for role in self.ROLES:
            save_atomic(_nets_state(getattr(self, role)), ckpt_dir / f"{role}_final.pdparams")
        self.normalization.update(self._validation_quantiles(val_set))
        save_atomic(self.normalization, ckpt_dir / "normalization.pdparams")

    def _make_optimizer(self, steps):
        # nelson1425: StepLR(step_size=int(0.95 * steps), gamma=0.1), stepped once per step
        scheduler = paddle.optimizer.lr.MultiStepDecay(
            learning_rate=float(self.cfg["lr"]), milestones=[max(int(0.95 * steps), 1)],
            gamma=0.1)
        parameters = self.student.parameters() + self.autoencoder.parameters()
        optimizer = make_adam(parameters, scheduler,
                              weight_decay=float(self.cfg.get("weight_decay", 1e-5)))
        return optimizer, scheduler

    def _load_teacher(self):
        """--teacher_weights PATH, or 'none' for random init, or unset: the shipped default."""
        choice = self.cfg.get("teacher_weights")
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
        with paddle.no_grad():
            teacher_st = self._normalize_teacher(self.teacher(x_st))
            teacher_ae = self._normalize_teacher(self.teacher(x_ae))
        losses = {"hard": hard_feature_loss(teacher_st, self.student(x_st))}
        if penalty is not None:
            x_penalty = imagenet_normalize(paddle.to_tensor(penalty.sample(len(images))))
            losses["penalty"] = penalty_loss(self.student(x_penalty))
        ae_out = self.autoencoder(x_ae)
        losses["ae"] = autoencoder_loss(teacher_ae, ae_out)
        losses["stae"] = student_ae_loss(ae_out, self.student(x_ae))
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

    def _batches(self, dataset):
        size = int(self.cfg.get("eval_batch_size") or 1)
        for start in range(0, len(dataset), size):
            yield np.stack([dataset[i] for i in range(start, min(start + size, len(dataset)))])

    def _validation_quantiles(self, val_set):
        net = self._inference_net(quantiles=None)
        local_maps, global_maps = [], []
        with paddle.no_grad():
            for images in self._batches(val_set):
                local_map, global_map = net.raw_maps(paddle.to_tensor(images))
                local_maps.append(local_map.numpy())
                global_maps.append(global_map.numpy())
        return map_normalization_quantiles(np.concatenate(local_maps),
                                           np.concatenate(global_maps))

    # -- checkpoints ---------------------------------------------------------------------

    def _save_checkpoint(self, ckpt_dir, step, optimizer, scheduler):
        for role in self.ROLES:
            save_atomic(_nets_state(getattr(self, role)), ckpt_dir / f"{role}_tmp.pdparams")
        save_train_state(ckpt_dir / "train_state.pdparams",
                         {"step": step, "optimizer": optimizer_state(optimizer, self._trained_layers()),
                          "scheduler": scheduler.state_dict()})

    def _trained_layers(self):
        return {"student": self.student, "autoencoder": self.autoencoder}

    def _restore(self, ckpt_dir, optimizer, scheduler):
        """Load the last tmp checkpoint for --resume; returns the number of steps done."""
        state_path = ckpt_dir / "train_state.pdparams"
        if not state_path.is_file():
            raise UserError(f"--resume: {state_path} not found (no interrupted EfficientAD "
                            "training to continue; train without --resume)")
        self._load_weights(ckpt_dir, "tmp")
        self.normalization = self._read_normalization(ckpt_dir)
        train_state = load_train_state(state_path)
        restore_optimizer(optimizer, train_state["optimizer"], self._trained_layers())
        scheduler.set_state_dict(train_state["scheduler"])
        return int(train_state["step"])

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
