"""oneDNN's training convolutions (adkit.core.onednn through adkit.train.onednn_layers): values
and gradients against a float64 numpy convolution, in both layouts; what falls back to Paddle;
the switch; the channels-last RD4AD twin; the OpenMP set-up of a process that holds torch's."""
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

from adkit.core import onednn
from adkit.train import onednn_layers
from adkit.train.onednn_layers import Conv2D, Conv2DTranspose, onednn_convolutions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RNG = np.random.default_rng(11)


# -- a float64 numpy convolution and its adjoints (NCHW, weights OIHW) ---------------------------

def _windows(shape, kernel, stride, pad):
    """[(i, j, rows, cols)] of each kernel tap: the slices of the padded input it reads."""
    n, c, h, w = shape
    top, left, bottom, right = pad
    out_h = (h + top + bottom - kernel[0]) // stride + 1
    out_w = (w + left + right - kernel[1]) // stride + 1
    return [(i, j, slice(i, i + stride * out_h, stride), slice(j, j + stride * out_w, stride))
            for i in range(kernel[0]) for j in range(kernel[1])], (out_h, out_w)


def np_conv(x, w, b, stride, pad):
    top, left, bottom, right = pad
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    taps, (out_h, out_w) = _windows(x.shape, w.shape[2:], stride, pad)
    y = np.zeros((x.shape[0], w.shape[0], out_h, out_w))
    for i, j, rows, cols in taps:
        y += np.einsum("nchw,oc->nohw", padded[:, :, rows, cols], w[:, :, i, j])
    return y if b is None else y + b[None, :, None, None]


def np_conv_grads(x, w, dy, stride, pad):
    """(dx, dw, db) of np_conv for the output gradient dy."""
    top, left, bottom, right = pad
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    dpadded, dw = np.zeros_like(padded), np.zeros_like(w)
    taps, _ = _windows(x.shape, w.shape[2:], stride, pad)
    for i, j, rows, cols in taps:
        dpadded[:, :, rows, cols] += np.einsum("nohw,oc->nchw", dy, w[:, :, i, j])
        dw[:, :, i, j] = np.einsum("nohw,nchw->oc", dy, padded[:, :, rows, cols])
    dx = dpadded[:, :, top:top + x.shape[2], left:left + x.shape[3]]
    return dx, dw, dy.sum(axis=(0, 2, 3))


def _to(layout, array):  # an NCHW array in ``layout``
    return array.transpose(0, 2, 3, 1).copy() if layout == "NHWC" else array


def _from(layout, array):
    return array.transpose(0, 3, 1, 2) if layout == "NHWC" else array


def _close(got, want, tol=2e-5):
    np.testing.assert_allclose(got, want, rtol=0, atol=tol * max(np.abs(want).max(), 1e-12))


# (input NCHW, out channels, kernel, stride, Paddle padding, padding as (top, left, bottom, right), bias, input needs grad)
CONVS = [
    ((2, 8, 10, 12), 16, 3, 1, 1, (1, 1, 1, 1), True, True),
    ((2, 8, 11, 13), 16, 4, 2, [1, 2], (1, 2, 1, 2), False, True),
    ((1, 3, 20, 20), 16, 4, 1, 0, (0, 0, 0, 0), True, False),  # an image: no gradient wanted
    ((2, 8, 9, 9), 16, 3, 1, [1, 2, 0, 1], (1, 0, 2, 1), True, True),  # [top, bottom, left, right]
]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("shape,out_ch,kernel,stride,padding,pad,bias,x_grad", CONVS)
def test_convolution_and_its_gradients_match_numpy(layout, shape, out_ch, kernel, stride, padding,
                                                   pad, bias, x_grad):
    conv = Conv2D(shape[1], out_ch, kernel, stride=stride, padding=padding,
                  bias_attr=None if bias else False, data_format=layout)
    x64 = RNG.standard_normal(shape).astype(np.float32).astype(np.float64)
    x = paddle.to_tensor(_to(layout, x64), dtype="float32")
    x.stop_gradient = not x_grad
    with onednn_convolutions(conv):
        y = conv(x)
    assert (shape, tuple(conv.weight.shape), bias, (stride, stride), pad, layout) in onednn.Convolution._cache
    w = conv.weight.numpy().astype(np.float64)
    b = conv.bias.numpy().astype(np.float64) if bias else None
    want = np_conv(x64, w, b, stride, pad)
    _close(_from(layout, y.numpy()), want)

    dy = RNG.standard_normal(want.shape).astype(np.float32).astype(np.float64)
    y.backward(paddle.to_tensor(_to(layout, dy), dtype="float32"))
    dx, dw, db = np_conv_grads(x64, w, dy, stride, pad)
    _close(conv.weight.grad.numpy(), dw)
    if bias:
        _close(conv.bias.grad.numpy(), db)
    if x_grad:
        _close(_from(layout, x.grad.numpy()), dx)
    else:
        assert x.grad is None


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("kernel,stride,padding,bias", [(2, 2, 0, False), (3, 2, 1, True)])
def test_transposed_convolution_is_the_adjoint_of_the_convolution(layout, kernel, stride, padding, bias):
    """conv_transpose(x, w) is the input gradient of conv(., w) at x; its own gradients follow."""
    layer = Conv2DTranspose(6, 4, kernel, stride=stride, padding=padding,
                            bias_attr=None if bias else False, data_format=layout)
    x64 = RNG.standard_normal((2, 6, 5, 7)).astype(np.float32).astype(np.float64)
    x = paddle.to_tensor(_to(layout, x64), dtype="float32")
    x.stop_gradient = False
    with onednn_convolutions(layer):
        y = layer(x)
    w = layer.weight.numpy().astype(np.float64)  # [in 6, out 4, k, k]: the mirrored conv's OIHW
    pad = (padding,) * 4
    out_side = ((5 - 1) * stride + kernel - 2 * padding, (7 - 1) * stride + kernel - 2 * padding)
    want, dw_of_conv, _ = np_conv_grads(np.zeros((2, 4) + out_side), w, x64, stride, pad)
    if bias:
        want = want + layer.bias.numpy()[None, :, None, None]
    _close(_from(layout, y.numpy()), want)

    dy = RNG.standard_normal(want.shape).astype(np.float32).astype(np.float64)
    y.backward(paddle.to_tensor(_to(layout, dy), dtype="float32"))
    _, dw, _ = np_conv_grads(dy, w, x64, stride, pad)  # weights' gradient of the mirrored conv
    _close(_from(layout, x.grad.numpy()), np_conv(dy, w, None, stride, pad))
    _close(layer.weight.grad.numpy(), dw)
    if bias:
        _close(layer.bias.grad.numpy(), dy.sum(axis=(0, 2, 3)))


def test_the_switch_turns_an_nchw_layer_on_only_inside_and_restores_it():
    layer = Conv2D(4, 8, 3, padding=1)
    twin = Conv2D(4, 8, 3, padding=1, data_format="NHWC")
    assert not layer.use_onednn and twin.use_onednn  # NHWC layers exist to run oneDNN
    x = paddle.to_tensor(RNG.standard_normal((1, 4, 9, 9)), dtype="float32")
    plain = paddle.nn.functional.conv2d(x, layer.weight, layer.bias, padding=1)
    np.testing.assert_array_equal(layer(x).numpy(), plain.numpy())  # Paddle's own kernel
    with onednn_convolutions(layer, twin):
        assert layer.use_onednn and twin.use_onednn
        inside = layer(x)
    assert not layer.use_onednn and twin.use_onednn
    _close(inside.numpy(), plain.numpy().astype(np.float64), 1e-5)
    with onednn_convolutions(layer, on=False):
        assert not layer.use_onednn


@pytest.mark.parametrize("options", [{"groups": 2}, {"dilation": 2}, {"padding": "SAME"},
                                     {"padding_mode": "reflect"}])
def test_what_onednn_is_not_given_runs_paddles_layer(options):
    options = {"padding": 1, **options}
    ours, theirs = Conv2D(4, 8, 3, **options), paddle.nn.Conv2D(4, 8, 3, **options)
    theirs.set_state_dict(ours.state_dict())
    x = paddle.to_tensor(RNG.standard_normal((1, 4, 9, 9)), dtype="float32")
    cached = len(onednn.Convolution._cache)
    with onednn_convolutions(ours):
        got = ours(x)
    np.testing.assert_array_equal(got.numpy(), theirs(x).numpy())
    assert len(onednn.Convolution._cache) == cached


def test_without_the_library_the_layers_are_paddles(monkeypatch):
    monkeypatch.setattr(onednn, "library", lambda: None)
    monkeypatch.setattr(onednn, "load_error", lambda: "no libdnnl.so.3")
    layer = Conv2D(3, 5, 3, padding=1, data_format="NHWC")
    x = paddle.to_tensor(RNG.standard_normal((1, 6, 6, 3)), dtype="float32")
    want = paddle.nn.functional.conv2d(x, layer.weight, layer.bias, padding=1, data_format="NHWC")
    np.testing.assert_array_equal(layer(x).numpy(), want.numpy())
    assert not onednn_layers.available()


def test_a_static_graph_of_a_switched_on_layer_is_paddles_conv(tmp_path):
    """Export sees Paddle's op even for a layer that runs oneDNN in dygraph."""
    layer = Conv2D(3, 4, 3, padding=1, data_format="NHWC")
    static = paddle.jit.to_static(layer, input_spec=[paddle.static.InputSpec([None, 8, 8, 3], "float32")],
                                  full_graph=True)
    x = paddle.to_tensor(RNG.standard_normal((2, 8, 8, 3)), dtype="float32")
    _close(static(x).numpy(), layer(x).numpy().astype(np.float64), 1e-5)


# -- RD4AD's channels-last twin -----------------------------------------------------------------

def test_the_rd4ad_twin_computes_what_the_student_computes():
    from adkit.models.rd4ad.networks import build_student, rd4ad_loss

    channels = (16, 32, 64)
    paddle.seed(3)
    nets = build_student("resnet18", channels)
    twins = build_student("resnet18", channels, "NHWC")
    for net, twin in zip(nets, twins):
        twin.set_state_dict(net.state_dict())
        assert list(twin.state_dict()) == list(net.state_dict())
        net.train()
        twin.train()
    feats = [RNG.standard_normal((2, c, s, s)) for c, s in zip(channels, (16, 8, 4))]
    enc = [paddle.to_tensor(f, dtype="float32") for f in feats]
    enc_nhwc = [paddle.to_tensor(_to("NHWC", f), dtype="float32") for f in feats]
    dec = nets[1](nets[0](enc))
    dec_nhwc = twins[1](twins[0](enc_nhwc))
    for d, t in zip(dec, dec_nhwc):
        _close(_from("NHWC", t.numpy()), d.numpy().astype(np.float64), 1e-4)
    for per_image in (False, True):
        loss = rd4ad_loss(enc, dec, per_image)
        loss_nhwc = rd4ad_loss(enc_nhwc, dec_nhwc, per_image, "NHWC")
        np.testing.assert_allclose(float(loss_nhwc), float(loss), rtol=1e-5)
    loss.backward()
    loss_nhwc.backward()
    compared = 0
    for net, twin in zip(nets, twins):
        for (name, p), (_, q) in zip(net.named_parameters(), twin.named_parameters()):
            if name.endswith(("_mean", "_variance")):  # BN statistics: updated alike in training
                _close(q.numpy(), p.numpy().astype(np.float64), 1e-5)
            else:
                _close(q.grad.numpy(), p.grad.numpy().astype(np.float64), 1e-4)
                compared += 1
    assert compared > 40


def test_rd4ad_trains_the_same_with_onednn_and_with_paddles_kernels(tmp_path):
    from adkit.models.rd4ad.method import RD4ADMethod

    from test_rd4ad import _cfg, _Images, _student_state

    train, val = _Images(4, seed=3), _Images(2, seed=4)
    states = {}
    for kernels in ("onednn", "paddle"):
        method = RD4ADMethod(_cfg(backbone="resnet18", steps=1, cpu_conv=kernels))
        method.fit(train, val, tmp_path / kernels)
        states[kernels] = _student_state(method)
        assert all(isinstance(sub, paddle.nn.Conv2D) and not isinstance(sub, Conv2D)
                   for sub in method.decoder.sublayers() if isinstance(sub, paddle.nn.Conv2D))
    # Adam's first step moves a weight by lr * g / (|g| + 1e-8): by ~lr whatever the gradient's
    # size, so where rounding flips the sign of a near-zero gradient the runs part by 2 lr;
    # everywhere else they agree to rounding
    lr = _cfg()["lr"]
    diffs = np.concatenate([np.abs(states["onednn"][key] - value).ravel()
                            for key, value in states["paddle"].items()])
    assert diffs.size > 100_000
    assert np.mean(diffs < 1e-6) > 0.99
    assert diffs.max() <= 2 * lr * 1.01


def test_frozen_forward_gives_channels_last_features():
    from adkit.deploy.engines import FrozenForward
    from adkit.models.backbones.encoders import build_encoder

    encoder = build_encoder("resnet18", "none")
    x = paddle.to_tensor(RNG.random((1, 3, 64, 64)), dtype="float32")
    nchw = FrozenForward(encoder, 64, cpu_threads=1)(x)
    nhwc = FrozenForward(encoder, 64, cpu_threads=1, channels_last=True)(x)
    for a, b in zip(nchw, nhwc):
        np.testing.assert_array_equal(_from("NHWC", b.numpy()), a.numpy())


# -- two OpenMP runtimes in one process --------------------------------------------------------

def _blocktime_after_setup(preload):
    code = ("import ctypes, os, sys\n"
            f"sys.path.insert(0, {ROOT!r})\n"
            + ("ctypes.CDLL('libgomp.so.1', mode=os.RTLD_GLOBAL)\n" if preload else "")
            + "from adkit.core.runtime import set_cpu_threads\n"
            "set_cpu_threads(2)\n"
            "import paddle\n"
            "iomp = ctypes.CDLL(os.path.join(os.path.dirname(paddle.__file__), 'libs', 'libiomp5.so'))\n"
            "print(iomp.kmp_get_blocktime())\n")
    env = {k: v for k, v in os.environ.items() if k != "KMP_BLOCKTIME"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return int(out.stdout.split()[-1])


def test_a_foreign_libgomp_makes_paddles_openmp_threads_sleep_at_once():
    """torch imported first puts its libgomp in the global scope: Paddle's oneDNN then takes its
    threads from there, and Paddle's spinning libiomp5 threads must not hold the cores."""
    assert _blocktime_after_setup(preload=False) == 200  # Intel's default: one pool, untouched
    assert _blocktime_after_setup(preload=True) == 0
