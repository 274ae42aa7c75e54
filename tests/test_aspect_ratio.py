"""Non-square model inputs (--image_size HxW) in every model: each method fitted at H x W gives
maps [N,1,H,W] and its scores, its exported graph agrees with dygraph, and a reloaded
checkpoint gives the same maps; the per-axis sizes are checked against hand arithmetic."""
import cv2
import numpy as np
import paddle
import pytest

from adkit.core.errors import UserError
from adkit.options.registry import model_names

RNG = np.random.default_rng(11)

# both orientations, each model at one of them (tiny, so a fit takes seconds)
SIZES = {"efficientad_s": (64, 96), "efficientad_m": (96, 64), "rd4ad": (64, 96),
         "stfpm": (96, 64), "patchcore": (96, 64), "padim": (64, 96)}


class _Images:
    def __init__(self, count, hw):
        self.images = RNG.random((count, 3) + hw).astype(np.float32)
        self.paths = [f"img{i}.png" for i in range(count)]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


def _cfg(model, hw, folder):
    from adkit.options.config import resolve_config
    from adkit.options.registry import spec_for

    spec = spec_for(model)
    options = dict(spec.smoke_options, image_size=f"{hw[0]}x{hw[1]}", output_dir=folder)
    if spec.trains:
        penalty = folder / "penalty"
        penalty.mkdir()
        cv2.imwrite(str(penalty / "p.png"), RNG.integers(0, 256, (40, 70, 3), dtype=np.uint8))
        options.update(steps=2, batch_size=2, eval_batch_size=2, save_interval=1)
        if model.startswith("efficientad"):
            options["penalty_dir"] = penalty  # its images are cut to H x W too
    argv = ["--model", model, "--mode", "train"]
    for key, value in options.items():
        argv += [f"--{key}", str(value)]
    return resolve_config(argv)


def _checkpoint_extra(folder):
    from adkit.train.training import load_train_state

    return load_train_state(folder / "checkpoint.pdparams")["extra"]


def test_every_model_has_a_size_here():
    assert sorted(SIZES) == sorted(model_names())


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(SIZES))
def test_fit_infer_export_and_reload_at_a_non_square_size(model, tmp_path):
    from adkit.deploy.engines import GraphEngine
    from adkit.options.registry import build_method

    hw = SIZES[model]
    cfg = _cfg(model, hw, tmp_path)
    assert cfg["image_size"] == list(hw)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    method = build_method(cfg)
    method.fit(_Images(4, hw), _Images(2, hw), ckpt)
    net = method.inference_net()
    x = RNG.random((2, 3) + hw).astype(np.float32)
    with paddle.no_grad():
        amap, score = (t.numpy() for t in net(paddle.to_tensor(x)))
    assert amap.shape == (2, 1) + hw and score.shape == (2,) and np.isfinite(amap).all()
    if model == "patchcore":  # its score is the reweighted worst patch (Eq. 7), not the map's max
        assert np.isfinite(score).all() and (score > 0).all()
    else:
        np.testing.assert_allclose(score, amap.reshape(2, -1).max(axis=1), rtol=1e-6)

    # the exported graph (save_inference_graph + Paddle Inference with oneDNN), as infer runs it
    graph_map, graph_score = GraphEngine(net, cfg["image_size"], cpu_threads=1).run(x)
    assert graph_map.shape == amap.shape
    np.testing.assert_allclose(graph_map, amap, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(amap).max()))
    np.testing.assert_allclose(graph_score, score, rtol=1e-4, atol=1e-5)

    if model in ("rd4ad", "stfpm", "patchcore", "padim"):  # EfficientAD stores role files
        assert _checkpoint_extra(ckpt)["image_size"] == list(hw)
    again = build_method(cfg)
    again.load(ckpt)
    with paddle.no_grad():
        reloaded = again.inference_net()(paddle.to_tensor(x))[0].numpy()
    np.testing.assert_allclose(reloaded, amap, rtol=1e-5, atol=1e-6)


def test_pdn_out_size_per_axis_by_hand():
    from adkit.models.efficientad.networks import PDN, pdn_out_size

    # PDN-S, unpadded: conv k4 (-3), pool /2 (floor), conv k4 (-3), pool /2, conv k3 (-2), conv k4 (-3)
    # height 64: 64-3=61, 61//2=30, 30-3=27, 27//2=13, 13-2=11, 11-3=8
    # width  96: 96-3=93, 93//2=46, 46-3=43, 43//2=21, 21-2=19, 19-3=16
    assert (pdn_out_size(64), pdn_out_size(96)) == (8, 16)
    # PDN-M adds 1x1 convs (no change) to the same kernels: the same sizes
    assert (pdn_out_size(64, "medium"), pdn_out_size(96, "medium")) == (8, 16)
    with paddle.no_grad():
        assert PDN("small", 16)(paddle.rand([1, 3, 64, 96])).shape == [1, 16, 8, 16]


def test_autoencoder_per_axis_by_hand():
    from adkit.models.efficientad.networks import AutoEncoder

    ae = AutoEncoder((64, 96))
    assert ae.enconv6.weight.shape == [64, 64, 2, 3]  # (64 // 32, 96 // 32): the code stays 1x1
    # the paper's (3, 8, 15, 32, 63, 127) at 256, rounded half up after scaling each axis:
    # x 64/256 = 0.25 -> 0.75, 2, 3.75, 8, 15.75, 31.75; x 96/256 = 0.375 -> 1.125, 3, 5.625, 12,
    # 23.625, 47.625
    assert ae.upsample_sizes == ((1, 1), (2, 3), (4, 6), (8, 12), (16, 24), (32, 48))
    ae.eval()
    x = paddle.rand([2, 3, 64, 96])
    with paddle.no_grad():
        code = x
        for i in range(1, 7):
            code = getattr(ae, f"enconv{i}")(code)
        assert code.shape == [2, 64, 1, 1]
        assert ae(x).shape == [2, 384, 8, 16]  # the PDN's map (test above)


@pytest.mark.slow
def test_padim_has_one_gaussian_per_stride_4_position(tmp_path):
    from adkit.models.padim.method import PaDiMMethod

    method = PaDiMMethod(_cfg("padim", (64, 96), tmp_path))
    method.fit(_Images(3, (64, 96)), None, tmp_path)
    mean, inv_cov = method.net.mean, method.net.inv_cov
    positions = (64 // 4) * (96 // 4)  # 16 x 24
    assert mean.shape[0] == positions and inv_cov.shape[:2] == [positions, mean.shape[1]]


def test_patchcore_score_is_the_worst_patch_distance_on_the_non_square_grid(tmp_path):
    from adkit.models.patchcore.method import PatchCoreMethod

    cfg = _cfg("patchcore", (96, 64), tmp_path)
    method = PatchCoreMethod(dict(cfg, neighbours=1))  # no reweighting: s* itself
    method.fit(_Images(3, (96, 64)), None, tmp_path)
    net = method.inference_net()
    x = paddle.to_tensor(RNG.random((2, 3, 96, 64)).astype(np.float32))
    with paddle.no_grad():
        emb = net.embedding(net.encoder(x)).numpy().astype(np.float64)
        score = net(x)[1].numpy()
    assert emb.shape[2:] == (96 // 8, 64 // 8)  # the stride-8 grid, 12 x 8
    patches = emb.transpose(0, 2, 3, 1).reshape(2, -1, emb.shape[1])
    bank = net.bank.numpy().astype(np.float64)
    nearest = np.sqrt(((patches[:, :, None] - bank[None, None]) ** 2).sum(-1)).min(-1)
    np.testing.assert_allclose(score, nearest.max(1), rtol=1e-4)


def test_the_frozen_teacher_graph_at_a_non_square_size():
    from adkit.core.runtime import restore_cpu_threads
    from adkit.train.frozen import FrozenForward
    from adkit.models.efficientad.networks import PDN

    restore_cpu_threads()
    teacher = PDN("small", 32)
    teacher.eval()
    x = paddle.to_tensor(RNG.standard_normal((2, 3, 96, 64)), dtype="float32")
    with paddle.no_grad():
        want = teacher(x).numpy()
    got = FrozenForward(teacher, [96, 64], cpu_threads=1)(x).numpy()
    assert got.shape == (2, 32, 16, 8)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_tensorrt_shapes_are_height_by_width():
    from adkit.deploy.engines import configure_gpu

    class Recorded:
        def enable_use_gpu(self, **_):
            pass

        def enable_tensorrt_engine(self, **_):
            pass

        def set_trt_dynamic_shape_info(self, **shapes):
            self.shapes = shapes

    config = Recorded()
    configure_gpu(config, 500, 0, "fp32", True, 4, "64x96")
    assert config.shapes["min_input_shape"]["image"] == [1, 3, 64, 96]
    assert config.shapes["max_input_shape"]["image"] == [4, 3, 64, 96]


def test_penalty_images_are_cut_to_height_by_width(tmp_path):
    from adkit.core.image_io import read_rgb, resize_rgb
    from adkit.models.efficientad.augment import PenaltyImages

    cv2.imwrite(str(tmp_path / "p.png"), RNG.integers(0, 256, (30, 50, 3), dtype=np.uint8))
    # resized to 2x (32 x 48), centre crop 16 x 24 from (round(16 / 2), round(24 / 2)) = (8, 12)
    colour = resize_rgb(read_rgb(str(tmp_path / "p.png")), (32, 48))[8:24, 12:36].transpose(2, 0, 1) / 255.0
    np.random.seed(1)
    samples = PenaltyImages(str(tmp_path), (16, 24)).sample(20)
    assert samples.shape == (20, 3, 16, 24)
    assert any(np.allclose(s, colour, atol=1e-5) for s in samples)


def test_resume_compares_sizes_whatever_form_the_checkpoint_stored(tmp_path):
    from adkit.train.trainer import CHECKPOINT_FILE, FORMAT, check_resumable
    from adkit.train.training import save_train_state

    path = tmp_path / CHECKPOINT_FILE
    save_train_state(path, {"format": FORMAT, "extra": {"image_size": 64}})  # written before [h, w]
    check_resumable(path, "rd4ad", {"image_size": [64, 64]})
    with pytest.raises(UserError, match="trained with --image_size 64, cannot resume with --image_size 64x96"):
        check_resumable(path, "rd4ad", {"image_size": [64, 96]})


def test_a_checkpoint_that_stored_a_side_still_loads(tmp_path):
    """Fitted and training checkpoints stored image_size as an int before [h, w]."""
    from adkit.train.training import load_train_state, save_train_state
    from adkit.models.padim.method import PaDiMMethod

    cfg = _cfg("padim", (64, 64), tmp_path)
    method = PaDiMMethod(cfg)
    method.fit(_Images(3, (64, 64)), None, tmp_path)
    state = load_train_state(tmp_path / "checkpoint.pdparams")
    state["extra"]["image_size"] = 64
    save_train_state(tmp_path / "checkpoint.pdparams", state)
    old = PaDiMMethod(dict(cfg, image_size=64))  # train_config.json of then: an int too
    old.load(tmp_path)
    assert old.image_size == (64, 64)
    x = paddle.to_tensor(RNG.random((1, 3, 64, 64)).astype(np.float32))
    with paddle.no_grad():
        np.testing.assert_array_equal(old.inference_net()(x)[0].numpy(), method.inference_net()(x)[0].numpy())


def test_distillation_refuses_a_non_square_size_in_one_line():
    from adkit.models.efficientad.distill import _settings

    with pytest.raises(UserError, match="square --image_size .* not 64x96"):
        _settings({"model": "efficientad_s", "image_size": [64, 96]})
    assert _settings({"model": "efficientad_s", "image_size": [64, 64]})["image_size"] == 64
