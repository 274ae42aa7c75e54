"""Teacher pretraining (--mode distill): target shapes and maths against numpy/OpenCV, the fixed
channel projection, target normalisation, learning, resume, and loading the result (and the
shipped default teacher) into EfficientAD's unpadded teacher."""
from pathlib import Path

import cv2
import numpy as np
import paddle
import pytest

from adkit.core.errors import UserError
from adkit.train.weights import read_state_dict, safe_load
from adkit.core.image_io import find_images
from adkit.train.trainer import CHECKPOINT_FILE as STATE_FILE
from adkit.models.efficientad.distill import (DistillSampler, DistillTarget, RunningChannelStats,
                            projection_matrix, run_distill, target_statistics)
from adkit.models.efficientad.networks import PDN
from adkit.models.efficientad.method import EfficientADMethod
from adkit.models.backbones.encoders import build_encoder
from adkit.models.graph_ops import imagenet_normalize

SHIPPED_TEACHER = Path(__file__).resolve().parent.parent / "weights" / "teacher_small.pdparams"


# --- target ------------------------------------------------------------------------------

class _FixedFeatures(paddle.nn.Layer):
    """Stands in for an encoder: returns the given stride-4/8/16 maps whatever the input."""

    def __init__(self, maps):
        super().__init__()
        self.maps = [paddle.to_tensor(m) for m in maps]
        self.channels = [m.shape[1] for m in maps]

    def forward(self, x):
        return self.maps


def _mean3x3_without_padding(x):
    """[C,H,W] 3x3 box mean over the pixels that exist (borders average fewer)."""
    def box_sum(a):
        return cv2.boxFilter(a, -1, (3, 3), normalize=False, borderType=cv2.BORDER_CONSTANT)

    counts = box_sum(np.ones(x.shape[1:], np.float64))
    return np.stack([box_sum(channel.astype(np.float64)) / counts for channel in x])


def test_target_is_projected_box_means_of_stride8_and_upsampled_stride16():
    rng = np.random.default_rng(0)
    f4, f8, f16 = (rng.standard_normal(s).astype(np.float32)
                   for s in ((1, 3, 16, 16), (1, 5, 8, 8), (1, 7, 4, 4)))
    got = DistillTarget(_FixedFeatures([f4, f8, f16]))(paddle.zeros([1, 3, 64, 64])).numpy()[0]
    up16 = np.stack([cv2.resize(c, (8, 8), interpolation=cv2.INTER_LINEAR)
                     for c in _mean3x3_without_padding(f16[0])])
    features = np.concatenate([_mean3x3_without_padding(f8[0]), up16])  # [12, 8, 8]
    want = np.einsum("oi,ihw->ohw", projection_matrix(12).astype(np.float64), features)
    assert got.shape == (384, 8, 8)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet18"])
@pytest.mark.parametrize("side", [32, 64, 96])
def test_target_grid_matches_the_padded_pdn_on_crops(backbone, side):
    target_net = DistillTarget(build_encoder(backbone, "none"))
    with paddle.no_grad():
        target = target_net(paddle.rand([2, 3, 2 * side, 2 * side]))
        pdn_out = PDN("small", padding=True)(paddle.rand([2, 3, side, side]))
    assert target.shape == pdn_out.shape == [2, 384, side // 4, side // 4]


def test_padded_pdn_interior_is_the_unpadded_pdn():
    """Why distilling the padded PDN trains EfficientAD's unpadded teacher: same weights, and
    the unpadded output is exactly the padded one without its 4 border cells."""
    padded, unpadded = PDN("small", padding=True), PDN("small")
    unpadded.set_state_dict(padded.state_dict())
    x = paddle.rand([1, 3, 64, 64])
    with paddle.no_grad():
        inner = padded(x).numpy()[:, :, 4:-4, 4:-4]
        np.testing.assert_allclose(unpadded(x).numpy(), inner, rtol=1e-5, atol=1e-5)


# --- projection and normalisation --------------------------------------------------------

def test_projection_pools_like_adaptive_average_pooling_when_narrowing():
    want = np.zeros((4, 10))
    for row, (start, end) in enumerate([(0, 3), (2, 5), (5, 8), (7, 10)]):  # torch's bins
        want[row, start:end] = 1 / (end - start)
    np.testing.assert_allclose(projection_matrix(10, 4), want, rtol=1e-6)
    wrn = projection_matrix(512 + 1024)  # WideResNet layer2 + layer3: 4 channels per output
    np.testing.assert_allclose(wrn[5, 20:24], 0.25)
    assert np.count_nonzero(wrn) == 1536


def test_projection_is_fixed_and_orthonormal_when_widening():
    a, b = projection_matrix(152), projection_matrix(152)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (384, 152)
    np.testing.assert_allclose(a.T.astype(np.float64) @ a, np.eye(152), atol=1e-5)
    assert not np.allclose(projection_matrix(152, seed=1), a)


def test_running_stats_equal_numpy_over_all_batches():
    rng = np.random.default_rng(1)
    batches = [rng.normal(1000.0, 0.01, (n, 3, 4, 5)) for n in (1, 4, 2)]  # large mean, tiny std
    stats = RunningChannelStats()
    for batch in batches:
        stats.update(batch)
    mean, std = stats.result()
    flat = np.concatenate([b.transpose(1, 0, 2, 3).reshape(3, -1) for b in batches], axis=1)
    np.testing.assert_allclose(mean, flat.mean(axis=1), rtol=1e-7)
    np.testing.assert_allclose(std, flat.std(axis=1), rtol=1e-4)


def _image_folder(root):
    """Three smooth colour/gray pictures, one in a subfolder, plus files to be ignored."""
    rng = np.random.default_rng(2)
    (root / "sub").mkdir(parents=True)
    for i, (name, shape) in enumerate([("a.png", (90, 120, 3)), ("b.jpg", (100, 80, 3)),
                                       ("sub/c.png", (70, 70))]):
        noise = rng.integers(0, 256, shape).astype(np.float32)
        image = cv2.GaussianBlur(noise, (0, 0), 2 + i) * 3 - 250
        cv2.imwrite(str(root / name), np.clip(image, 0, 255).astype(np.uint8))
    (root / ".hidden.png").write_bytes(b"not an image")
    (root / "notes.txt").write_text("not an image")
    return root


def test_finds_images_recursively_and_rejects_empty_folders(tmp_path):
    folder = _image_folder(tmp_path / "data")
    assert [Path(p).name for p in find_images(folder, "--data_dir")] == ["a.png", "b.jpg", "c.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        find_images(tmp_path / "empty", "--data_dir")


def test_sampler_views_are_aligned_and_in_range(tmp_path):
    sampler = DistillSampler(find_images(_image_folder(tmp_path / "data"), "--data_dir"), 64, 32)
    small, big = sampler.batch(np.random.default_rng(0), 5)
    assert small.shape == (5, 3, 32, 32) and big.shape == (5, 3, 64, 64)
    assert 0 <= big.min() and big.max() <= 1
    np.testing.assert_allclose(small, big.reshape(5, 3, 32, 2, 32, 2).mean(axis=(3, 5)),
                               rtol=1e-6)
    again = sampler.batch(np.random.default_rng(0), 5)
    np.testing.assert_array_equal(again[1], big)
    whole = DistillSampler(sampler.paths, 32, None).batch(np.random.default_rng(0), 2)
    assert whole[0].shape == (2, 3, 32, 32) and whole[1].shape == (2, 3, 64, 64)


def test_normalised_targets_have_zero_mean_and_unit_std(tmp_path):
    sampler = DistillSampler(find_images(_image_folder(tmp_path / "data"), "--data_dir"), 32, 32)
    target_net = DistillTarget(build_encoder("efficientnet_lite0", "none"))
    settings = {"batch_size": 3, "norm_samples": 7, "seed": 5}
    mean, std = target_statistics(target_net, sampler, settings)
    targets = []
    with paddle.no_grad():  # the same samples: each stats batch has its own seeded stream
        for index, size in enumerate((3, 3, 1)):
            _, big = sampler.batch(np.random.default_rng([5, 1, index]), size)
            targets.append(target_net(paddle.to_tensor(big)).numpy().astype(np.float64))
    values = np.concatenate(targets).transpose(1, 0, 2, 3).reshape(384, -1)
    normalised = (values - mean[:, None]) / std[:, None]
    np.testing.assert_allclose(normalised.mean(axis=1), 0, atol=1e-4)
    np.testing.assert_allclose(normalised.std(axis=1), 1, rtol=1e-3)


# --- training ----------------------------------------------------------------------------

def _cfg(tmp_path, out, **overrides):
    cfg = {"model": "efficientad_s", "data_dir": str(tmp_path / "data"), "output_dir": str(out),
           "backbone": "efficientnet_lite0", "backbone_weights": "none", "steps": 4,
           "batch_size": 2, "lr": 1e-3, "seed": 7, "save_interval": 2, "log_interval": 2,
           "resume": False, "image_size": 64, "crop_size": 32, "norm_samples": 4}
    cfg.update(overrides)
    return cfg


@pytest.fixture
def data_root(tmp_path):
    _image_folder(tmp_path / "data")
    return tmp_path


@pytest.mark.slow
def test_resumed_distillation_is_bit_identical(data_root):
    straight, resumed = data_root / "straight", data_root / "resumed"
    run_distill(_cfg(data_root, straight))
    run_distill(_cfg(data_root, resumed, steps=2))
    assert int(safe_load(resumed / STATE_FILE)["step"]) == 2
    run_distill(_cfg(data_root, resumed, resume=True))
    want, got = safe_load(straight / STATE_FILE), safe_load(resumed / STATE_FILE)
    for name, value in want["nets"]["student"].items():
        np.testing.assert_array_equal(got["nets"]["student"][name], value, err_msg=name)
    np.testing.assert_array_equal(got["losses"], want["losses"])
    assert len(got["losses"]) == 4
    for name, value in read_state_dict(straight / "teacher_small.pdparams").items():
        np.testing.assert_array_equal(read_state_dict(resumed / "teacher_small.pdparams")[name],
                                      value)


@pytest.mark.slow
def test_resume_with_other_options_is_a_user_error(data_root):
    run_distill(_cfg(data_root, data_root / "out", steps=1))
    with pytest.raises(UserError, match="crop_size"):
        run_distill(_cfg(data_root, data_root / "out", crop_size=40, resume=True))
    with pytest.raises(UserError, match="crop_size"):
        run_distill(_cfg(data_root, data_root / "bad", crop_size=36))


def _held_out_losses(out, tmp_path):
    """MSE of the teacher file (run padded) against the normalised targets of a fixed batch,
    and the MSE of always predicting zero (the targets' mean square) on that batch."""
    state = safe_load(out / STATE_FILE)
    pdn = PDN("small", padding=True)
    pdn.set_state_dict({k: paddle.to_tensor(v.astype(np.float32))
                        for k, v in read_state_dict(out / "teacher_small.pdparams").items()})
    sampler = DistillSampler(find_images(tmp_path / "data", "--data_dir"), 64, 32)
    small, big = sampler.batch(np.random.default_rng(99), 6)
    target_net = DistillTarget(build_encoder("efficientnet_lite0", "none"))
    with paddle.no_grad():
        target = target_net(paddle.to_tensor(big)).numpy().astype(np.float64)
        prediction = pdn(imagenet_normalize(paddle.to_tensor(small))).numpy()
    extra = state["extra"]
    target = (target - extra["target_mean"][:, None, None]) / extra["target_std"][:, None, None]
    return np.mean((prediction - target) ** 2), np.mean(target ** 2)


@pytest.mark.slow
def test_distillation_lowers_the_loss_on_held_out_crops(data_root):
    out = data_root / "out"
    run_distill(_cfg(data_root, out, steps=1))
    after_one, predict_zero = _held_out_losses(out, data_root)
    run_distill(_cfg(data_root, out, steps=20, resume=True))
    after_many, _ = _held_out_losses(out, data_root)
    assert after_many < after_one and after_many < 0.8 * predict_zero


def test_teacher_file_loads_into_efficientad_unpadded_teacher(data_root):
    out = data_root / "out"
    teacher_file = run_distill(_cfg(data_root, out, steps=2))
    assert teacher_file == out / "teacher_small.pdparams"
    stored = read_state_dict(teacher_file)
    assert all(v.dtype == np.float16 for v in stored.values())
    method = EfficientADMethod({"model": "efficientad_s", "image_size": 64, "seed": 0,
                                "teacher_weights": str(teacher_file)})
    method._load_teacher()
    fp32 = safe_load(out / STATE_FILE)["nets"]["student"]
    rounded, exact = PDN("small"), PDN("small")
    rounded.set_state_dict({k: paddle.to_tensor(v.astype(np.float16).astype(np.float32))
                            for k, v in fp32.items()})
    exact.set_state_dict({k: paddle.to_tensor(v) for k, v in fp32.items()})
    x = paddle.rand([1, 3, 64, 64])
    with paddle.no_grad():
        got, want, full = method.teacher(x).numpy(), rounded(x).numpy(), exact(x).numpy()
    assert got.shape == (1, 384, 8, 8)
    np.testing.assert_array_equal(got, want)
    # storing fp16 moves the outputs by about 1e-3 of their spread
    assert np.abs(got - full).max() < 3e-3 * full.std()


# --- the shipped default -----------------------------------------------------------------

def test_shipped_teacher_is_the_default_for_efficientad_s():
    stored = read_state_dict(SHIPPED_TEACHER)
    assert all(v.dtype == np.float16 for v in stored.values())
    method = EfficientADMethod({"model": "efficientad_s", "image_size": 256, "seed": 0,
                                "teacher_weights": None})
    method._load_teacher()
    loaded = method.teacher.state_dict()
    assert set(loaded) == set(stored)
    for name, value in stored.items():
        np.testing.assert_array_equal(loaded[name].numpy(), value.astype(np.float32))


def test_missing_default_teacher_warns_how_to_distil_one(caplog):
    method = EfficientADMethod({"model": "efficientad_m", "image_size": 64, "seed": 0,
                                "teacher_weights": None})
    before = method.teacher.conv1.weight.numpy().copy()
    method._load_teacher()  # no weights/teacher_medium.pdparams is shipped
    np.testing.assert_array_equal(method.teacher.conv1.weight.numpy(), before)
    assert "RANDOM" in caplog.text and "--model efficientad_m --mode distill" in caplog.text
