"""EfficientAD: networks against numpy re-implementations, losses and maps against numpy and
hand-computed values, teacher weight layouts, export, and training/resume determinism."""

import cv2
import numpy as np
import paddle
import pytest

from adkit.core.errors import UserError
from adkit.models.graph_ops import bilinear_resize
from adkit.models.efficientad.networks import PDN, AutoEncoder, pdn_out_size, teacher_state_from_torch
from adkit.models.efficientad.inference import EfficientADInference
from adkit.models.efficientad.method import EfficientADMethod
from adkit.models.efficientad.augment import PenaltyImages, color_jitter
from adkit.models.efficientad.losses import (autoencoder_loss, hard_feature_loss, map_normalization_quantiles, penalty_loss, quantile_linear,
                                             student_ae_loss, teacher_channel_stats)

RNG = np.random.default_rng(0)


# --- numpy reference layers (torch semantics) --------------------------------------------

def np_conv(x, weight, bias, stride=1, pad=0):
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    out_c, in_c, kh, kw = weight.shape
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))
    windows = windows[:, ::stride, ::stride]
    h, w = windows.shape[1:3]
    cols = windows.transpose(1, 2, 0, 3, 4).reshape(h * w, in_c * kh * kw)
    return (cols @ weight.reshape(out_c, -1).T).T.reshape(out_c, h, w) + bias[:, None, None]


def np_pool2(x):
    c, h, w = x.shape
    return x[:, :h // 2 * 2, :w // 2 * 2].reshape(c, h // 2, 2, w // 2, 2).mean(axis=(2, 4))


def np_resize_hw(x, out_hw):
    """Bilinear, align_corners=False (half-pixel centres, negative sources clamped to 0)."""
    def axis_weights(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        return i0, np.minimum(i0 + 1, n_in - 1), src - i0

    r0, r1, rl = axis_weights(x.shape[1], out_hw[0])
    x = x[:, r0] * (1 - rl)[None, :, None] + x[:, r1] * rl[None, :, None]
    c0, c1, cl = axis_weights(x.shape[2], out_hw[1])
    return x[:, :, c0] * (1 - cl) + x[:, :, c1] * cl


def np_resize(x, size):
    return np_resize_hw(x, (size, size))


def relu(x):
    return np.maximum(x, 0)


def weights_of(layer):
    return {k: v.numpy().astype(np.float64) for k, v in layer.state_dict().items()}


def conv(w, name, x, **kw):
    return np_conv(x, w[f"{name}.weight"], w[f"{name}.bias"], **kw)


# --- networks -----------------------------------------------------------------------------

@pytest.mark.parametrize("in_hw, out_hw", [((1, 1), (3, 3)), ((4, 4), (8, 8)),
                                           ((5, 7), (13, 4)), ((16, 16), (5, 5))])
def test_bilinear_resize_matches_numpy_reference(in_hw, out_hw):
    x = RNG.standard_normal((2, 3) + in_hw)
    expected = np.stack([np_resize_hw(image, out_hw) for image in x])
    got = bilinear_resize(paddle.to_tensor(x, dtype="float32"), list(out_hw)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("size", ["small", "medium"])
def test_paper_shapes_at_256(size):
    x = paddle.rand([1, 3, 256, 256])
    with paddle.no_grad():
        assert PDN(size, 384)(x).shape == [1, 384, 56, 56]
        assert PDN(size, 768)(x).shape == [1, 768, 56, 56]
        assert PDN(size, 384, padding=True)(x).shape == [1, 384, 64, 64]
        assert AutoEncoder(256)(x).shape == [1, 384, 56, 56]
    assert pdn_out_size(256, size) == 56 and pdn_out_size(256, size, padding=True) == 64


def test_autoencoder_generalises_to_other_sizes():
    # hand arithmetic: 128 px -> PDN map 128-3=125 /2=62 -3=59 /2=29 -2=27 -3=24
    assert pdn_out_size(128) == 24
    ae = AutoEncoder(128)
    # the paper's sizes halved, rounded, on both axes
    assert ae.upsample_sizes == tuple((s, s) for s in (2, 4, 8, 16, 32, 64))
    assert ae.enconv6.weight.shape == [64, 64, 4, 4]
    with paddle.no_grad():
        assert ae(paddle.rand([2, 3, 128, 128])).shape == [2, 384, 24, 24]


def test_padded_pools_count_the_padding_like_torch():
    pool = PDN("small", padding=True).avgpool1
    out = pool(paddle.ones([1, 1, 4, 4])).numpy()[0, 0]
    # each corner window holds 1 real pixel and 3 zero pads, averaged over all 4
    assert out.shape == (3, 3) and out[0, 0] == pytest.approx(0.25) and \
        out[0, 1] == pytest.approx(0.5)


@pytest.mark.parametrize("size", ["small", "medium"])
def test_pdn_forward_matches_numpy_reference(size):
    pdn = PDN(size, 16)
    x = RNG.standard_normal((3, 40, 40))
    w = weights_of(pdn)
    h = np_pool2(relu(conv(w, "conv1", x)))
    h = np_pool2(relu(conv(w, "conv2", h)))
    if size == "small":
        ref = conv(w, "conv4", relu(conv(w, "conv3", h)))
    else:
        h = relu(conv(w, "conv4", relu(conv(w, "conv3", h))))
        ref = conv(w, "conv6", relu(conv(w, "conv5", h)))
    with paddle.no_grad():
        out = pdn(paddle.to_tensor(x[None], dtype="float32")).numpy()[0]
        half = pdn(paddle.to_tensor(x[None], dtype="float32"), channels=(5, 13)).numpy()[0]
    assert out.shape == ref.shape == (16, 2, 2)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(half, ref[5:13], rtol=1e-4, atol=1e-5)


def test_a_channel_range_of_the_pdn_gets_the_gradients_of_the_sliced_output():
    """Training computes only the student half each loss uses: its parameter gradients must be
    those of slicing the full output (zero for the other half of the last conv)."""
    x = paddle.to_tensor(RNG.standard_normal((2, 3, 40, 40)), dtype="float32")
    target = paddle.to_tensor(RNG.standard_normal((2, 8, 2, 2)), dtype="float32")
    pdn = PDN("small", 16)

    def gradients(out):
        paddle.square(out - target).mean().backward()
        grads = {name: p.grad.numpy().copy() for name, p in pdn.named_parameters()}
        pdn.clear_gradients()
        return grads

    sliced = gradients(pdn(x)[:, 8:])
    ranged = gradients(pdn(x, channels=(8, 16)))
    assert not np.any(sliced["conv4.weight"][:8]) and np.any(sliced["conv4.weight"][8:])
    for name in sliced:
        np.testing.assert_allclose(ranged[name], sliced[name], rtol=1e-4, atol=1e-7, err_msg=name)


def test_autoencoder_forward_matches_numpy_reference():
    ae = AutoEncoder(64)
    ae.eval()  # dropout off
    x = RNG.standard_normal((3, 64, 64))
    w = weights_of(ae)
    h = x
    for i in range(1, 6):
        h = relu(conv(w, f"enconv{i}", h, stride=2, pad=1))
    h = conv(w, "enconv6", h)
    assert h.shape == (64, 1, 1)
    for i, side in enumerate((1, 2, 4, 8, 16, 32)):  # (3, 8, 15, 32, 63, 127) / 4, rounded
        h = relu(conv(w, f"deconv{i + 1}", np_resize(h, side), pad=2))
    h = relu(conv(w, "deconv7", np_resize(h, 8), pad=1))
    ref = conv(w, "deconv8", h, pad=1)
    with paddle.no_grad():
        out = ae(paddle.to_tensor(x[None], dtype="float32")).numpy()[0]
    assert out.shape == ref.shape == (384, 8, 8)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_autoencoder_dropout_is_active_only_in_training():
    ae = AutoEncoder(64)
    x = paddle.rand([1, 3, 64, 64])
    ae.train()
    assert not np.allclose(ae(x).numpy(), ae(x).numpy())
    ae.eval()
    np.testing.assert_array_equal(ae(x).numpy(), ae(x).numpy())


# --- teacher weight layouts ---------------------------------------------------------------

NELSON_CONV_INDICES = {"small": (0, 3, 6, 8), "medium": (0, 3, 6, 8, 10, 12)}


@pytest.mark.parametrize("size", ["small", "medium"])
def test_nelson_and_anomalib_layouts_load_the_same_network(size):
    from adkit.train.weights import load_into_layer

    source = PDN(size)
    ours = {k: v.numpy() for k, v in source.state_dict().items()}
    nelson = {f"{index}.{p}": ours[f"conv{i + 1}.{p}"]
              for i, index in enumerate(NELSON_CONV_INDICES[size]) for p in ("weight", "bias")}
    anomalib = dict(ours)  # anomalib names its PDN convs conv1..convN
    x = paddle.rand([1, 3, 40, 40])
    expected = source(x).numpy()
    for layout in (nelson, anomalib):
        target = PDN(size)
        load_into_layer(target, teacher_state_from_torch(layout, size), "test")
        np.testing.assert_array_equal(target(x).numpy(), expected)


def test_teacher_layout_mismatch_is_a_user_error():
    small_nelson = {f"{i}.{p}": np.zeros(1) for i in (0, 3, 6, 8) for p in ("weight", "bias")}
    with pytest.raises(UserError, match="teacher_medium.pth"):
        teacher_state_from_torch(small_nelson, "medium", source="teacher_medium.pth")
    with pytest.raises(UserError, match="not a PDN-small"):
        teacher_state_from_torch({"features.0.weight": np.zeros(1)}, "small")


# --- losses -------------------------------------------------------------------------------

@pytest.mark.parametrize("q", [0.0, 0.1, 0.5, 0.9, 0.999, 1.0])
def test_quantile_matches_numpy_linear(q):
    values = RNG.standard_normal(5001).astype(np.float32)
    ties = RNG.integers(0, 5, 1000).astype(np.float32)
    for data in (values, ties):
        got = float(quantile_linear(paddle.to_tensor(data), q))
        assert got == pytest.approx(float(np.quantile(data.astype(np.float64), q)), rel=1e-6)


def test_quantile_on_a_full_size_distance_map():
    data = RNG.random((1, 384, 56, 56)).astype(np.float32)
    got = float(quantile_linear(paddle.to_tensor(data), 0.999))
    assert got == pytest.approx(float(np.quantile(data.astype(np.float64), 0.999)), rel=1e-6)


@pytest.mark.parametrize("q", [0.999, 0.7])
def test_hard_feature_loss_and_gradient_against_numpy(q):
    cases = [(RNG.standard_normal((2, 6, 10, 10)), RNG.standard_normal((2, 12, 10, 10))),
             # distances in {0, 1, 4, 9}: the quantile falls inside a run of ties
             (RNG.integers(0, 4, (2, 6, 10, 10)).astype(np.float64), np.zeros((2, 12, 10, 10)))]
    for teacher, student in cases:
        d = (teacher - student[:, :6]) ** 2
        hard = d >= np.quantile(d, q)
        expected_loss = d[hard].mean()
        expected_grad = -2 * (teacher - student[:, :6]) * hard / hard.sum()

        s = paddle.to_tensor(student[:, :6], dtype="float32", stop_gradient=False)
        loss = hard_feature_loss(paddle.to_tensor(teacher, dtype="float32"), s, q)
        loss.backward()
        assert float(loss) == pytest.approx(expected_loss, rel=1e-5)
        np.testing.assert_allclose(s.grad.numpy(), expected_grad, rtol=1e-4, atol=1e-7)


def test_mean_squared_losses_against_numpy():
    teacher, ae = RNG.standard_normal((2, 3, 4, 4)), RNG.standard_normal((2, 3, 4, 4))
    student = RNG.standard_normal((2, 6, 4, 4))
    t, a, s_teacher, s_ae = (paddle.to_tensor(v, dtype="float32")
                             for v in (teacher, ae, student[:, :3], student[:, 3:]))
    assert float(penalty_loss(s_teacher)) == pytest.approx((student[:, :3] ** 2).mean(), rel=1e-5)
    assert float(autoencoder_loss(t, a)) == pytest.approx(((teacher - ae) ** 2).mean(), rel=1e-5)
    assert float(student_ae_loss(a, s_ae)) == pytest.approx(((ae - student[:, 3:]) ** 2).mean(),
                                                            rel=1e-5)


# --- normalisation and maps ----------------------------------------------------------------

def test_teacher_stats_follow_the_reference_definition():
    images = RNG.random((6, 3, 5, 5)).astype(np.float32)
    mean3 = np.array([0.485, 0.456, 0.406])[:, None, None]
    std3 = np.array([0.229, 0.224, 0.225])[:, None, None]
    outputs = [(img.astype(np.float64) - mean3) / std3 for img in images]  # identity teacher
    channel_mean = np.mean([o.mean(axis=(1, 2)) for o in outputs], axis=0)
    channel_std = np.sqrt(np.mean(
        [((o - channel_mean[:, None, None]) ** 2).mean(axis=(1, 2)) for o in outputs], axis=0))
    batches = [images[:2], images[2:3], images[3:]]  # uneven batches must not matter
    mean, std = teacher_channel_stats(paddle.nn.Identity(), batches)
    np.testing.assert_allclose(mean, channel_mean, rtol=1e-5)
    np.testing.assert_allclose(std, channel_std, rtol=1e-5)


def test_map_quantiles_hand_values():
    q = map_normalization_quantiles(np.arange(1001.0).reshape(1, 1, 7, 143),
                                    np.arange(201.0) * 2)
    assert q == pytest.approx({"q_st_start": 900.0, "q_st_end": 995.0,
                               "q_ae_start": 360.0, "q_ae_end": 398.0})


class _Constant(paddle.nn.Layer):
    """Ignores its input; channel blocks of constant values on an 8x8 map."""

    def __init__(self, *values):
        super().__init__()
        self.values = values

    def forward(self, x):
        blocks = [paddle.full([x.shape[0], 2, 8, 8], v) for v in self.values]
        return paddle.concat(blocks, axis=1)


def test_inference_maps_normalise_combine_pad_and_resize():
    # teacher 7 normalised by mean 1, std 2 -> 3; student halves 1 and 5; autoencoder 7
    net = EfficientADInference(_Constant(7.0), _Constant(1.0, 5.0), _Constant(7.0),
                               np.ones(2), np.full(2, 2.0),
                               {"q_st_start": 1.0, "q_st_end": 5.0,
                                "q_ae_start": 2.0, "q_ae_end": 12.0})
    x = paddle.zeros([2, 3, 32, 32])
    local_map, global_map = net.raw_maps(x)
    np.testing.assert_allclose(local_map.numpy(), np.full([2, 1, 8, 8], 4.0))   # (3-1)^2
    np.testing.assert_allclose(global_map.numpy(), np.full([2, 1, 8, 8], 4.0))  # (7-5)^2
    amap, score = net(x)
    # 0.5 * 0.1*(4-1)/(5-1) + 0.5 * 0.1*(4-2)/(12-2) = 0.0375 + 0.01 = 0.0475
    assert amap.shape == [2, 1, 32, 32] and score.shape == [2]
    # padded 8 -> 16 (4 zeros each side), resized x2: the border pixel is a pad zero, the
    # centre is the constant; output pixel i samples input (i + 0.5) / 2 - 0.5, so pixels
    # 7 and 8 sit 1/4 and 3/4 of the way from the last pad zero (3) to the map (4)
    row = amap.numpy()[0, 0, 16]
    assert row[0] == pytest.approx(0.0) and row[16] == pytest.approx(0.0475)
    assert row[7] == pytest.approx(0.0475 * 0.25) and row[8] == pytest.approx(0.0475 * 0.75)
    np.testing.assert_allclose(score.numpy(), [0.0475, 0.0475], rtol=1e-6)


def test_inference_without_quantiles_is_visibly_unset():
    net = EfficientADInference(_Constant(1.0), _Constant(1.0, 1.0), _Constant(1.0),
                               np.zeros(2), np.ones(2))
    assert np.isnan(net(paddle.zeros([1, 3, 32, 32]))[1].numpy()).all()


def _trained_like_inference_net(size=64):
    teacher, student, ae = PDN(), PDN("small", 768), AutoEncoder(size)
    net = EfficientADInference(teacher, student, ae, RNG.random(384), 1 + RNG.random(384),
                               {"q_st_start": 0.1, "q_st_end": 2.0,
                                "q_ae_start": 0.2, "q_ae_end": 3.0})
    net.eval()
    return net


@pytest.mark.slow
def test_export_runs_in_paddle_inference_with_dynamic_batch(tmp_path):
    from paddle import inference

    net = _trained_like_inference_net()
    spec = [paddle.static.InputSpec([None, 3, 64, 64], "float32", "x")]
    paddle.jit.save(paddle.jit.to_static(net, input_spec=spec, full_graph=True),
                    str(tmp_path / "model"))
    graph = next(p for p in tmp_path.iterdir() if p.suffix in (".json", ".pdmodel"))
    for onednn in (True, False):  # oneDNN is Paddle Inference's CPU default
        config = inference.Config(str(graph), str(tmp_path / "model.pdiparams"))
        config.disable_gpu()
        config.enable_mkldnn() if onednn else config.disable_mkldnn()
        predictor = inference.create_predictor(config)
        feed = predictor.get_input_handle(predictor.get_input_names()[0])
        for batch in (1, 3):
            x = RNG.random((batch, 3, 64, 64)).astype(np.float32)
            feed.reshape(list(x.shape))
            feed.copy_from_cpu(x)
            predictor.run()
            got = [predictor.get_output_handle(n).copy_to_cpu()
                   for n in predictor.get_output_names()]
            with paddle.no_grad():
                want = [t.numpy() for t in net(paddle.to_tensor(x))]
            for g, w in zip(got, want):
                assert g.shape == w.shape
                np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


# --- augmentation -------------------------------------------------------------------------

def test_color_jitter_hand_values():
    image = np.stack([np.full((2, 2), 0.9), np.full((2, 2), 0.5), np.full((2, 2), 0.1)])
    gray = 0.299 * 0.9 + 0.587 * 0.5 + 0.114 * 0.1
    np.testing.assert_allclose(color_jitter(image, 0, 1.2)[:, 0, 0], [1.0, 0.6, 0.12],
                               rtol=1e-6)
    # uniform image: contrast blends with its own mean gray level
    np.testing.assert_allclose(color_jitter(image, 1, 0.8)[:, 0, 0],
                               0.8 * np.array([0.9, 0.5, 0.1]) + 0.2 * gray, rtol=1e-6)
    np.testing.assert_allclose(color_jitter(image, 2, 0.8), 0.8 * image + 0.2 * gray,
                               rtol=1e-6)
    grey_image = np.full((3, 2, 2), 0.4)
    np.testing.assert_allclose(color_jitter(grey_image, 2, 1.2), grey_image, rtol=1e-6)


def test_penalty_images_resize_grayscale_and_centre_crop(tmp_path):
    from adkit.core.image_io import read_rgb, resize_rgb

    (tmp_path / "class_a").mkdir()
    picture = RNG.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "class_a" / "p.png"), picture)
    colour = resize_rgb(read_rgb(str(tmp_path / "class_a" / "p.png")), 32)[8:24, 8:24] / 255.0
    colour = colour.transpose(2, 0, 1)
    gray = np.repeat((colour * np.array([0.299, 0.587, 0.114])[:, None, None]).sum(0,
                                                                                    keepdims=True),
                     3, axis=0)
    np.random.seed(0)
    samples = PenaltyImages(str(tmp_path), 16).sample(200)
    assert samples.shape == (200, 3, 16, 16) and samples.dtype == np.float32
    is_gray = [np.allclose(s, gray, atol=1e-5) for s in samples]
    is_colour = [np.allclose(s, colour, atol=1e-5) for s in samples]
    assert all(g != c for g, c in zip(is_gray, is_colour))
    assert 0.2 < np.mean(is_gray) < 0.4  # p = 0.3


def test_penalty_dir_without_images_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no images"):
        PenaltyImages(str(tmp_path), 16)


# --- the training method --------------------------------------------------------------------

class _Images:
    def __init__(self, images):
        self.images = images
        self.paths = [f"img{i}.png" for i in range(len(images))]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


def _cfg(tmp_path, **overrides):
    penalty_dir = tmp_path / "penalty"
    penalty_dir.mkdir(exist_ok=True)
    picture = np.random.default_rng(5).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    cv2.imwrite(str(penalty_dir / "a.png"), picture)
    cfg = dict(model="efficientad_s", image_size=64, batch_size=1, lr=1e-4, weight_decay=1e-5,
               steps=6, epochs=None, seed=3, save_interval=3, log_interval=2,
               teacher_weights="none", penalty_dir=str(penalty_dir), eval_batch_size=2)
    cfg.update(overrides)
    return cfg


def _data():
    rng = np.random.default_rng(1)
    return (_Images(rng.random((4, 3, 64, 64)).astype(np.float32)),
            _Images(rng.random((2, 3, 64, 64)).astype(np.float32)))


def _final_weights(ckpt):
    from adkit.train.weights import read_state_dict

    return {role: read_state_dict(ckpt / f"{role}_final.pdparams")
            for role in ("teacher", "student", "autoencoder")}


@pytest.mark.slow
def test_resumed_training_reaches_the_same_weights(tmp_path, monkeypatch):
    from adkit.train.weights import safe_load

    train, val = _data()
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    straight.mkdir(), resumed.mkdir()
    EfficientADMethod(_cfg(tmp_path)).fit(train, val, straight)

    calls = {"n": 0}
    original_step = EfficientADMethod._train_step

    def interrupted_step(self, *args):
        calls["n"] += 1
        if calls["n"] == 5:  # after the checkpoint at step 3 and one more step
            raise KeyboardInterrupt
        return original_step(self, *args)

    monkeypatch.setattr(EfficientADMethod, "_train_step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        EfficientADMethod(_cfg(tmp_path)).fit(train, val, resumed)
    assert int(safe_load(resumed / "checkpoint.pdparams")["step"]) == 3
    monkeypatch.setattr(EfficientADMethod, "_train_step", original_step)
    EfficientADMethod(_cfg(tmp_path, seed=3)).fit(train, val, resumed, resume=True)

    want, got = _final_weights(straight), _final_weights(resumed)
    for role in want:
        for name in want[role]:
            np.testing.assert_array_equal(got[role][name], want[role][name], err_msg=name)
    norm_a, norm_b = safe_load(straight / "normalization.pdparams"), \
        safe_load(resumed / "normalization.pdparams")
    assert norm_a["q_st_end"] == norm_b["q_st_end"] and norm_a["q_st_end"] > norm_a["q_st_start"]


def test_trained_checkpoint_loads_and_scores(tmp_path):
    from adkit.train.weights import save_atomic

    train, val = _data()
    teacher_file = tmp_path / "teacher_small.pdparams"
    teacher = PDN("small")
    nelson = {f"{index}.{p}": teacher.state_dict()[f"conv{i + 1}.{p}"].numpy()
              for i, index in enumerate((0, 3, 6, 8)) for p in ("weight", "bias")}
    save_atomic(nelson, teacher_file)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    EfficientADMethod(_cfg(tmp_path, steps=2, penalty_dir=None,
                           teacher_weights=str(teacher_file))).fit(train, val, ckpt)
    method = EfficientADMethod(_cfg(tmp_path))
    method.load(ckpt)
    np.testing.assert_array_equal(method.teacher.conv3.weight.numpy(), nelson["6.weight"])
    with paddle.no_grad():
        amap, score = method.inference_net()(paddle.to_tensor(val.images))
    assert amap.shape == [2, 1, 64, 64] and np.isfinite(amap.numpy()).all()
    np.testing.assert_allclose(score.numpy(), amap.numpy().max(axis=(1, 2, 3)))


def test_load_without_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        EfficientADMethod(_cfg(tmp_path)).load(tmp_path)


def test_resume_without_train_state_is_a_user_error(tmp_path):
    train, val = _data()
    with pytest.raises(UserError, match="--resume"):
        EfficientADMethod(_cfg(tmp_path)).fit(train, val, tmp_path, resume=True)


@pytest.mark.slow
def test_training_moves_only_student_and_autoencoder_and_lowers_the_loss(tmp_path,
                                                                         monkeypatch):
    train, val = _data()
    one_image = _Images(train.images[:1])
    recorded = []
    original_step = EfficientADMethod._train_step

    def recording_step(self, *args):
        recorded.append(original_step(self, *args))
        return recorded[-1]

    monkeypatch.setattr(EfficientADMethod, "_train_step", recording_step)
    method = EfficientADMethod(_cfg(tmp_path, steps=12, lr=1e-3, penalty_dir=None))
    teacher_before = {k: v.numpy().copy() for k, v in method.teacher.state_dict().items()}
    student_before = method.student.conv1.weight.numpy().copy()
    method.fit(one_image, val, tmp_path)
    for name, value in method.teacher.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), teacher_before[name])
    assert not np.allclose(method.student.conv1.weight.numpy(), student_before)
    assert set(recorded[0]) == {"hard", "ae", "stae", "total"}
    assert recorded[-1]["hard"] < 0.85 * recorded[0]["hard"]
    assert recorded[-1]["ae"] < recorded[0]["ae"]
