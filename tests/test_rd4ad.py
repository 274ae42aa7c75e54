"""RD4AD: encoder/student shapes, weight loading, loss and anomaly map against numpy/scipy,
export through Paddle Inference, and training/resume/load behaviour."""
import numpy as np
import paddle
import pytest
from scipy import ndimage

from adkit.deploy.exported import model_files
from adkit.core.errors import UserError
from adkit.models.graph_ops import bilinear_resize, summed_separable_maps
from adkit.train.training import load_train_state
from adkit.train.weights import Weights
from adkit.models.backbones import encoders
from adkit.models.backbones.encoders import build_encoder
from adkit.models.rd4ad.networks import (RD4ADInference, anomaly_map, build_student, gaussian_blur_matrix, rd4ad_loss)
from adkit.models.rd4ad.method import RD4ADMethod

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)


def _features(shapes, seed):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape).astype(np.float32) for shape in shapes]


# ------------------------------------------------------------------ shapes

@pytest.mark.slow
@pytest.mark.parametrize("backbone, widths, code_channels", [
    ("resnet18", (64, 128, 256), 512),
    ("wide_resnet50_2", (256, 512, 1024), 2048),
])
def test_encoder_bottleneck_decoder_shapes_at_256(backbone, widths, code_channels):
    encoder = build_encoder(backbone, "none")
    bottleneck, decoder = build_student(backbone, encoder.channels)
    bottleneck.eval()
    decoder.eval()
    with paddle.no_grad():
        enc = encoder(paddle.rand([1, 3, 256, 256]))
        code = bottleneck(enc)
        dec = decoder(code)
    expected = [(1, c, s, s) for c, s in zip(widths, (64, 32, 16))]
    assert tuple(encoder.channels) == widths
    assert [tuple(f.shape) for f in enc] == expected
    assert tuple(code.shape) == (1, code_channels, 8, 8)
    assert [tuple(f.shape) for f in dec] == expected


def test_student_for_generic_encoder_uses_its_widths():
    channels = (24, 40, 112)  # EfficientNet-Lite0 at strides 4, 8, 16
    bottleneck, decoder = build_student("efficientnet_lite0", channels)
    feats = [paddle.rand([2, c, s, s]) for c, s in zip(channels, (16, 8, 4))]
    code = bottleneck(feats)
    assert tuple(code.shape) == (2, 224, 2, 2)
    assert [tuple(f.shape) for f in decoder(code)] == [tuple(f.shape) for f in feats]


def test_unknown_backbone_lists_choices():
    with pytest.raises(UserError, match="wide_resnet50_2.*efficientnet_lite2"):
        build_encoder("vgg16", "none")


# ------------------------------------------------------------------ weights

def _reference_features(ref_net, x01):
    """layer1..3 of a paddle.vision ResNet (an independent implementation) on x in [0,1]."""
    x = paddle.to_tensor((x01 - IMAGENET_MEAN) / IMAGENET_STD)
    x = ref_net.maxpool(ref_net.relu(ref_net.bn1(ref_net.conv1(x))))
    f1 = ref_net.layer1(x)
    f2 = ref_net.layer2(f1)
    return [f.numpy() for f in (f1, f2, ref_net.layer3(f2))]


def _randomised_vision_resnet(name, seed):
    """A paddle.vision ResNet with random weights and non-trivial BN statistics."""
    paddle.seed(seed)
    net = getattr(paddle.vision.models, name)()
    rng = np.random.default_rng(seed)
    for key, value in net.state_dict().items():
        if key.endswith("._mean"):
            value.set_value(rng.normal(0, 0.1, value.shape).astype(np.float32))
        elif key.endswith("._variance"):
            value.set_value(rng.uniform(0.5, 2.0, value.shape).astype(np.float32))
    net.eval()
    return net


def _as_torchvision_state(vision_net):
    """The same weights under torchvision's names and layouts."""
    state = {}
    for key, value in vision_net.state_dict().items():
        array = value.numpy()
        if key == "fc.weight":
            array = array.T  # torch Linear is [out, in]
        key = key.replace("._mean", ".running_mean").replace("._variance", ".running_var")
        state[key] = array
        if key.endswith(".running_var"):
            state[key.replace("running_var", "num_batches_tracked")] = np.array(7, np.int64)
    return state


def _assert_same_features(encoder, ref_net, x01):
    with paddle.no_grad():
        ours = [f.numpy() for f in encoder(paddle.to_tensor(x01))]
        theirs = _reference_features(ref_net, x01)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_torchvision_state_dict_loads_into_resnet18(monkeypatch):
    ref = _randomised_vision_resnet("resnet18", seed=1)
    state = _as_torchvision_state(ref)
    assert "layer4.0.conv1.weight" in state and "fc.weight" in state
    monkeypatch.setattr(encoders, "resolve_backbone_weights",
                        lambda name, arg: Weights(state, "torchvision-layout test", True))
    encoder = build_encoder("resnet18", "unused")
    x01 = np.random.default_rng(0).uniform(size=(2, 3, 64, 64)).astype(np.float32)
    _assert_same_features(encoder, ref, x01)


def test_paddle_vision_weights_file_loads_into_resnet18(tmp_path):
    ref = _randomised_vision_resnet("resnet18", seed=2)
    path = tmp_path / "resnet18.pdparams"
    paddle.save(ref.state_dict(), str(path))
    encoder = build_encoder("resnet18", str(path))
    x01 = np.random.default_rng(1).uniform(size=(1, 3, 64, 64)).astype(np.float32)
    _assert_same_features(encoder, ref, x01)


def test_wide_resnet50_2_matches_paddle_vision(monkeypatch):
    ref = _randomised_vision_resnet("wide_resnet50_2", seed=3)
    state = {k: v.numpy() for k, v in ref.state_dict().items()}
    monkeypatch.setattr(encoders, "resolve_backbone_weights",
                        lambda name, arg: Weights(state, "paddle.vision test", False))
    encoder = build_encoder("wide_resnet50_2", "unused")
    x01 = np.random.default_rng(2).uniform(size=(1, 3, 64, 64)).astype(np.float32)
    _assert_same_features(encoder, ref, x01)


def test_random_encoder_is_reproducible_and_leaves_rng_alone():
    paddle.seed(123)
    expected_next = paddle.rand([3]).numpy()
    paddle.seed(123)
    first = build_encoder("resnet18", "none")
    after_build = paddle.rand([3]).numpy()
    second = build_encoder("resnet18", "none")
    np.testing.assert_array_equal(after_build, expected_next)
    np.testing.assert_array_equal(first.net.conv1.weight.numpy(), second.net.conv1.weight.numpy())


def test_encoder_stays_frozen_when_parent_trains():
    encoder = build_encoder("resnet18", "none")
    bottleneck, decoder = build_student("resnet18", encoder.channels)
    parent = RD4ADInference(encoder, bottleneck, decoder, 64)
    x = paddle.rand([2, 3, 64, 64])
    with paddle.no_grad():
        before = encoder(x)[2].numpy()
    stats_before = encoder.net.bn1._mean.numpy().copy()
    parent.train()  # sets .training on every sublayer directly
    after = encoder(x)[2].numpy()
    assert all(p.stop_gradient for p in encoder.parameters())
    assert not any(layer.training for layer in encoder.sublayers(include_self=True))
    assert bottleneck.training and decoder.training
    np.testing.assert_array_equal(encoder.net.bn1._mean.numpy(), stats_before)
    np.testing.assert_array_equal(after, before)
    encoder.train()
    assert not any(layer.training for layer in encoder.sublayers(include_self=True))


# ------------------------------------------------------------------ loss and map

def _np_cos_distance(a, b):
    """1 - cosine similarity along axis 1 (channels)."""
    dot = (a * b).sum(1)
    norms = np.sqrt((a * a).sum(1)) * np.sqrt((b * b).sum(1))
    return 1.0 - dot / norms


SHAPES = [(2, 4, 16, 16), (2, 8, 8, 8), (2, 16, 4, 4)]


def test_loss_matches_numpy():
    enc, dec = _features(SHAPES, 0), _features(SHAPES, 1)
    per_pixel = sum(_np_cos_distance(a, b).mean() for a, b in zip(enc, dec))
    per_image = sum(_np_cos_distance(a.reshape(2, -1), b.reshape(2, -1)).mean()
                    for a, b in zip(enc, dec))
    to_tensors = lambda feats: [paddle.to_tensor(f) for f in feats]  # noqa: E731
    loss = rd4ad_loss(to_tensors(enc), to_tensors(dec))
    loss_flat = rd4ad_loss(to_tensors(enc), to_tensors(dec), per_image=True)
    np.testing.assert_allclose(float(loss), per_pixel, rtol=1e-5)
    np.testing.assert_allclose(float(loss_flat), per_image, rtol=1e-5)
    assert abs(per_pixel - per_image) > 1e-3  # the two definitions really differ here


def _np_upsample_align_corners(image, out_hw):
    """Bilinear resize with corner pixels aligned, via scipy's linear spline sampling."""
    h, w = image.shape
    rows = np.arange(out_hw[0]) * (h - 1) / (out_hw[0] - 1)
    cols = np.arange(out_hw[1]) * (w - 1) / (out_hw[1] - 1)
    grid = np.meshgrid(rows, cols, indexing="ij")
    return ndimage.map_coordinates(image.astype(np.float64), grid, order=1)


def test_upsample_matches_scipy_and_paddle_interpolate():
    x = _features([(2, 1, 5, 7)], 2)[0]
    out = bilinear_resize(paddle.to_tensor(x), [23, 40], align_corners=True).numpy()
    for b in range(2):
        np.testing.assert_allclose(out[b, 0], _np_upsample_align_corners(x[b, 0], (23, 40)),
                                   atol=1e-5)
    ref = paddle.nn.functional.interpolate(paddle.to_tensor(x), size=[23, 40], mode="bilinear",
                                           align_corners=True).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_summed_separable_maps_match_numpy():
    rng = np.random.default_rng(8)
    xs = [rng.normal(size=(3, 2, h, w)) for h, w in ((7, 5), (4, 9), (2, 2))]
    rows = [rng.normal(size=(6, x.shape[2])) for x in xs]
    cols = [rng.normal(size=(11, x.shape[3])) for x in xs]
    got = summed_separable_maps([paddle.to_tensor(x, dtype="float32") for x in xs], rows, cols)
    ref = sum(np.einsum("ph,bchw,qw->bcpq", r, x, c) for x, r, c in zip(xs, rows, cols))
    assert got.shape == [3, 2, 6, 11]
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(40, 57), (9, 12)])  # 9 and 12 < radius 16: reflected twice
def test_blur_matrices_match_scipy_reflect_at_the_borders(shape):
    rng = np.random.default_rng(3)
    x = (rng.uniform(size=shape) > 0.9).astype(np.float64)  # sparse spikes
    x[:, :3] += 2.0  # strong edges where the boundary rule matters
    x[-2:, :] += 1.0
    out = gaussian_blur_matrix(shape[0], 4.0) @ x @ gaussian_blur_matrix(shape[1], 4.0).T
    ref = ndimage.gaussian_filter(x, sigma=4, mode="reflect", truncate=4.0)
    np.testing.assert_allclose(out, ref, atol=1e-12)
    # paddle's own 'reflect' padding is scipy's 'mirror': the result must not match that
    mirror = ndimage.gaussian_filter(x, sigma=4, mode="mirror")
    assert np.abs(out - mirror).max() > 1e-3


def test_anomaly_map_matches_numpy_scipy():
    enc, dec = _features(SHAPES, 4), _features(SHAPES, 5)
    out_hw = (48, 80)
    amap = anomaly_map([paddle.to_tensor(f) for f in enc], [paddle.to_tensor(f) for f in dec],
                       out_hw).numpy()
    assert amap.shape == (2, 1) + out_hw
    for b in range(2):
        summed = sum(_np_upsample_align_corners(_np_cos_distance(e, d)[b], out_hw)
                     for e, d in zip(enc, dec))
        ref = ndimage.gaussian_filter(summed, sigma=4, mode="reflect", truncate=4.0)
        np.testing.assert_allclose(amap[b, 0], ref, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_inference_net_exports_with_dynamic_batch(tmp_path):
    from paddle import inference

    encoder = build_encoder("resnet18", "none")
    bottleneck, decoder = build_student("resnet18", encoder.channels)
    net = RD4ADInference(encoder, bottleneck, decoder, 64)
    net.eval()
    x = np.random.default_rng(6).uniform(size=(3, 3, 64, 64)).astype(np.float32)
    with paddle.no_grad():
        amap, score = net(paddle.to_tensor(x))
    np.testing.assert_allclose(score.numpy(), amap.numpy().reshape(3, -1).max(1), rtol=1e-6)
    static = paddle.jit.to_static(
        net, input_spec=[paddle.static.InputSpec([None, 3, 64, 64], "float32", "image")],
        full_graph=True)
    paddle.jit.save(static, str(tmp_path / "inference"))
    config = inference.Config(*model_files(str(tmp_path)))  # oneDNN on, as deployed
    predictor = inference.create_predictor(config)
    for batch in (1, 3):
        handle = predictor.get_input_handle(predictor.get_input_names()[0])
        handle.reshape([batch, 3, 64, 64])
        handle.copy_from_cpu(x[:batch])
        predictor.run()
        out_map, out_score = (predictor.get_output_handle(name).copy_to_cpu()
                              for name in predictor.get_output_names())
        np.testing.assert_allclose(out_map, amap.numpy()[:batch], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(out_score, score.numpy()[:batch], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ training

class _Images:
    def __init__(self, count, seed, size=64):
        rng = np.random.default_rng(seed)
        self.images = rng.uniform(size=(count, 3, size, size)).astype(np.float32)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index]


def _cfg(**overrides):
    cfg = {"model": "rd4ad", "backbone": "resnet18", "backbone_weights": "none",
           "image_size": 64, "steps": 4, "epochs": None, "batch_size": 2, "lr": 0.005,
           "beta1": 0.5, "beta2": 0.999, "seed": 0, "save_interval": 2, "log_interval": 1,
           "eval_batch_size": 4, "loss_per_image": False}
    cfg.update(overrides)
    return cfg


def _student_state(method):
    state = {f"b.{k}": v.numpy() for k, v in method.bottleneck.state_dict().items()}
    state.update({f"d.{k}": v.numpy() for k, v in method.decoder.state_dict().items()})
    return state


@pytest.mark.slow
def test_fit_resume_and_load(tmp_path):
    # a small student keeps the checkpoints (weights + Adam moments) quick to write
    cfg = _cfg(backbone="efficientnet_lite0")
    train, val = _Images(5, seed=7), _Images(3, seed=8)
    straight = RD4ADMethod(cfg)
    straight.fit(train, val, tmp_path / "a")
    final = _student_state(straight)

    RD4ADMethod(dict(cfg, steps=2)).fit(train, val, tmp_path / "b")  # an "interrupted" run
    halfway = load_train_state(tmp_path / "b" / "checkpoint.pdparams")
    assert halfway["step"] == 2
    assert not np.array_equal(halfway["nets"]["decoder"]["layer3.1.conv2.weight"],
                              final["d.layer3.1.conv2.weight"])  # steps 3-4 changed weights
    resumed = RD4ADMethod(cfg)
    resumed.fit(train, val, tmp_path / "b", resume=True)
    resumed_state = _student_state(resumed)
    for key in final:
        np.testing.assert_array_equal(resumed_state[key], final[key], err_msg=key)

    saved = load_train_state(tmp_path / "a" / "checkpoint.pdparams")
    assert saved["step"] == 4 and saved["extra"]["backbone"] == "efficientnet_lite0"

    loaded = RD4ADMethod(dict(cfg, backbone_weights=None))  # None: reuse the recorded source
    loaded.load(tmp_path / "a")
    with paddle.no_grad():
        amap, score = loaded.inference_net()(paddle.to_tensor(val.images))
        _, trained_score = straight.inference_net()(paddle.to_tensor(val.images))
    np.testing.assert_allclose(score.numpy(), amap.numpy().reshape(3, -1).max(1), rtol=1e-6)
    np.testing.assert_allclose(score.numpy(), trained_score.numpy(), rtol=1e-5)


@pytest.mark.slow
def test_load_errors(tmp_path):
    with pytest.raises(UserError, match="no trained rd4ad checkpoint in .*run --mode train"):
        RD4ADMethod(_cfg()).load(tmp_path)
    with pytest.raises(UserError, match="--resume: .*checkpoint.pdparams not found"):
        RD4ADMethod(_cfg()).fit(_Images(2, seed=9), None, tmp_path, resume=True)
    RD4ADMethod(_cfg(steps=1)).fit(_Images(2, seed=9), _Images(1, seed=10), tmp_path)
    other = tmp_path / "other_resnet18.pdparams"
    paddle.save(_randomised_vision_resnet("resnet18", seed=4).state_dict(), str(other))
    with pytest.raises(UserError, match="differ from the ones this model was trained with"):
        RD4ADMethod(_cfg(backbone_weights=str(other))).load(tmp_path)
