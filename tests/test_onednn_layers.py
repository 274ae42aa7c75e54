"""oneDNN's training convolutions (adkit.core.onednn through adkit.train.onednn_layers), on the
library inside the installed Paddle wheel: values and gradients against a float64 numpy
convolution, in both layouts; what falls back to Paddle; the switch; the self-check on first use
and the fallback to Paddle's kernels after any oneDNN failure (checked against Paddle's own
convolutions); the bounded cache and its released handles; the channels-last RD4AD twin; the
OpenMP set-up of a process that holds torch's."""
import ctypes
import logging
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


def test_a_static_graph_of_a_switched_on_layer_is_paddles_conv(tmp_path):
    """Export sees Paddle's op even for a layer that runs oneDNN in dygraph."""
    layer = Conv2D(3, 4, 3, padding=1, data_format="NHWC")
    static = paddle.jit.to_static(layer, input_spec=[paddle.static.InputSpec([None, 8, 8, 3], "float32")],
                                  full_graph=True)
    x = paddle.to_tensor(RNG.standard_normal((2, 8, 8, 3)), dtype="float32")
    _close(static(x).numpy(), layer(x).numpy().astype(np.float64), 1e-5)


# -- the self-check on first use, and the fallback to Paddle's kernels --------------------------

@pytest.fixture
def fresh_onednn():
    """oneDNN undecided before the test (its first use loads the library and self-checks) and
    again after it, so that the tests after it decide anew."""
    onednn.reset()
    yield
    onednn.reset()


def _fallback_warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "adkit" and r.levelno >= logging.WARNING]


def _count_runs(monkeypatch):
    """A list that grows by one per primitive oneDNN runs for a layer (Convolution._run)."""
    runs, run = [], onednn.Convolution._run

    def counted(self, *args):
        runs.append(self.key)
        return run(self, *args)

    monkeypatch.setattr(onednn.Convolution, "_run", counted)
    return runs


def _loader(monkeypatch, name, replacement=None):
    """Load the library with the symbol ``name`` missing (``replacement`` None) or replaced by
    ``replacement(real function)``."""

    class Loader(ctypes.CDLL):
        def __getattr__(self, attribute):
            if attribute != name:
                return super().__getattr__(attribute)
            if replacement is None:
                raise AttributeError(f"{self._name}: undefined symbol: {attribute}")
            function = replacement(super().__getattr__(attribute))
            setattr(self, attribute, function)
            return function

    monkeypatch.setattr(onednn, "_CDLL", Loader)


def _assert_paddles_layers(runs):
    """With oneDNN off, the layers give exactly what Paddle's own layers give, values and
    gradients, and oneDNN runs nothing (``runs``: _count_runs's list)."""
    self_check_runs = len(runs)
    for layout in ("NCHW", "NHWC"):
        for ours, theirs in ((Conv2D(3, 5, 3, padding=1, data_format=layout),
                              paddle.nn.Conv2D(3, 5, 3, padding=1, data_format=layout)),
                             (Conv2DTranspose(3, 5, 2, stride=2, data_format=layout),
                              paddle.nn.Conv2DTranspose(3, 5, 2, stride=2, data_format=layout))):
            theirs.set_state_dict(ours.state_dict())
            x = RNG.standard_normal((2, 3, 6, 6) if layout == "NCHW" else (2, 6, 6, 3))
            results = []
            for layer in (ours, theirs):
                tensor = paddle.to_tensor(x, dtype="float32", stop_gradient=False)
                with onednn_convolutions(layer):
                    y = layer(tensor)
                (y * y).sum().backward()
                results.append([y.numpy(), tensor.grad.numpy(), layer.weight.grad.numpy()])
            for got, want in zip(*results):
                np.testing.assert_array_equal(got, want)
    assert len(runs) == self_check_runs and len(onednn.Convolution._cache) == 0


def test_the_self_check_passes_on_the_real_library_and_training_runs_onednn(fresh_onednn, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="adkit")
    checks, check = [], onednn.self_check
    monkeypatch.setattr(onednn, "self_check", lambda dnnl: checks.append(dnnl) or check(dnnl))
    runs = _count_runs(monkeypatch)
    assert onednn.usable() and onednn.usable() and onednn_layers.available()
    assert len(checks) == 1 and onednn.reason() is None  # once per process
    assert len(runs) == 3 * 2 * len(onednn.SELF_CHECK_CONVS)  # three passes, two layouts
    runs.clear()
    dnnl = onednn.library()
    assert dnnl.lib._name == onednn.library_path() and os.path.isfile(dnnl.lib._name)  # the wheel's
    assert dnnl.version[0] == onednn.SUPPORTED_MAJOR
    assert (dnnl.f32, dnnl.tag_abcd, dnnl.tag_acdb, dnnl.forward_training) == (3, 5, 22, 64)  # dnnl_types.h 3.x

    layer = Conv2D(4, 6, 3, stride=2, padding=1)
    x = paddle.to_tensor(RNG.standard_normal((2, 4, 9, 9)), dtype="float32", stop_gradient=False)
    with onednn_convolutions(layer):
        y = layer(x)
    (y * y).sum().backward()
    assert len(runs) == 3  # forward, backward-data, backward-weights
    got = [y.numpy(), x.grad.numpy(), layer.weight.grad.numpy(), layer.bias.grad.numpy()]
    x.clear_gradient()
    layer.clear_gradients()
    y = paddle.nn.functional.conv2d(x, layer.weight, layer.bias, stride=2, padding=1)  # Paddle's kernels
    (y * y).sum().backward()
    for a, b in zip(got, [y.numpy(), x.grad.numpy(), layer.weight.grad.numpy(), layer.bias.grad.numpy()]):
        _close(a, b.astype(np.float64), 1e-5)
    assert _fallback_warnings(caplog) == []


def _scale_weights_gradient(backward_weights):
    def perturbed(self, x, dy, dw, scratch, db=None):
        backward_weights(self, x, dy, dw, scratch, db)
        values = np.ctypeslib.as_array((ctypes.c_float * int(np.prod(self.key[1]))).from_address(dw))
        values *= 1.001  # 10x the self-check's tolerance
    return perturbed


@pytest.mark.parametrize("corruption", ["wrong format tag", "weights gradient off by 0.1%"])
def test_a_wrong_result_in_the_self_check_falls_back_with_one_warning(fresh_onednn, monkeypatch, caplog,
                                                                      corruption):
    caplog.set_level(logging.INFO, logger="adkit")
    if corruption == "wrong format tag":  # NHWC read as acbd: another order of the same numbers
        monkeypatch.setitem(onednn._ENUMS, "tag_acdb", ("dnnl_fmt_tag2str", "acbd"))
    else:
        monkeypatch.setattr(onednn.Convolution, "backward_weights",
                            _scale_weights_gradient(onednn.Convolution.backward_weights))
    runs = _count_runs(monkeypatch)
    assert not onednn.usable() and not onednn_layers.available()
    warnings = _fallback_warnings(caplog)
    assert len(warnings) == 1 and "self-check" in warnings[0] and "differs from Paddle's" in warnings[0]
    assert "training continues on Paddle's kernels" in warnings[0] and "\n" not in warnings[0]
    _assert_paddles_layers(runs)
    assert not onednn.usable() and len(_fallback_warnings(caplog)) == 1  # for the rest of the process


def test_a_missing_symbol_falls_back_with_one_warning(fresh_onednn, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="adkit")
    _loader(monkeypatch, "dnnl_memory_desc_destroy")
    runs = _count_runs(monkeypatch)
    assert not onednn.usable()
    warnings = _fallback_warnings(caplog)
    assert len(warnings) == 1 and "has no dnnl_memory_desc_destroy" in warnings[0]
    _assert_paddles_layers(runs)


def test_a_failing_primitive_creation_falls_back_with_one_warning(fresh_onednn, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="adkit")
    _loader(monkeypatch, "dnnl_convolution_backward_weights_primitive_desc_create",
            lambda real: lambda *args: 3)  # dnnl_unimplemented
    runs = _count_runs(monkeypatch)
    assert not onednn.usable()
    warnings = _fallback_warnings(caplog)
    assert len(warnings) == 1
    assert "dnnl_convolution_backward_weights_primitive_desc_create failed (unimplemented" in warnings[0]
    _assert_paddles_layers(runs)


def test_another_major_version_is_refused_with_one_warning(fresh_onednn, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="adkit")
    monkeypatch.setattr(onednn, "SUPPORTED_MAJOR", 4)
    runs = _count_runs(monkeypatch)
    assert not onednn.usable()
    warnings = _fallback_warnings(caplog)
    assert len(warnings) == 1 and "these calls follow oneDNN 4.x" in warnings[0]
    _assert_paddles_layers(runs)


def test_without_the_library_file_the_layers_are_paddles(fresh_onednn, monkeypatch, caplog, tmp_path):
    caplog.set_level(logging.INFO, logger="adkit")
    monkeypatch.setattr(onednn, "library_path", lambda: str(tmp_path / "libdnnl.so.3"))
    runs = _count_runs(monkeypatch)
    assert not onednn.usable()
    warnings = _fallback_warnings(caplog)
    assert len(warnings) == 1 and "a Paddle wheel without oneDNN" in warnings[0]
    _assert_paddles_layers(runs)


def test_off_x86_64_linux_the_library_is_not_loaded(fresh_onednn, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="adkit")
    monkeypatch.setattr(onednn.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(onednn, "_CDLL", lambda path: pytest.fail("loaded on aarch64"))
    runs = _count_runs(monkeypatch)
    assert not onednn.usable()
    assert _fallback_warnings(caplog) == []  # not an error: logged at info
    assert any("x86-64 Linux only" in r.getMessage() for r in caplog.records if r.name == "adkit")
    _assert_paddles_layers(runs)


def _tiny_net():
    paddle.seed(5)
    return paddle.nn.Sequential(Conv2D(3, 8, 3, stride=2, padding=1), paddle.nn.ReLU(),
                                Conv2DTranspose(8, 4, 2, stride=2), paddle.nn.ReLU(),
                                Conv2D(4, 2, 3, padding=1, bias_attr=False))


def _train_tiny_net(on, steps, step_now=None):
    """(losses, parameters) of ``steps`` SGD steps of ``_tiny_net`` on fixed data; its
    convolutions on oneDNN when ``on``, else Paddle's own layers."""
    net = _tiny_net()
    optimizer = paddle.optimizer.Momentum(0.05, momentum=0.9, parameters=net.parameters())
    rng = np.random.default_rng(7)
    x = paddle.to_tensor(rng.standard_normal((2, 3, 12, 12)), dtype="float32")
    target = paddle.to_tensor(rng.standard_normal((2, 2, 12, 12)), dtype="float32")
    losses = []
    with onednn_convolutions(net, on=on):
        for step in range(steps):
            if step_now is not None:
                step_now[0] = step
            loss = ((net(x) - target) ** 2).mean()
            loss.backward()
            optimizer.step()
            optimizer.clear_grad()
            losses.append(float(loss))
    return np.array(losses), [p.numpy() for p in net.parameters()]


@pytest.mark.parametrize("failing,error", [("forward", onednn.OneDNNError),
                                           ("backward_data", onednn.OneDNNError),
                                           ("backward_weights", OSError)])
def test_an_error_in_the_middle_of_training_falls_back_for_that_call_and_the_rest(
        fresh_onednn, monkeypatch, caplog, failing, error):
    caplog.set_level(logging.INFO, logger="adkit")
    steps, broken_step = 5, 2
    want_losses, want_params = _train_tiny_net(False, steps)  # Paddle's kernels throughout
    step_now, runs_per_step = [None], [0] * steps
    real = getattr(onednn.Convolution, failing)

    def breaks_at_step_k(self, *args, **kwargs):
        if step_now[0] == broken_step:
            raise error(f"{failing} broke")
        runs_per_step[step_now[0]] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(onednn.Convolution, failing, breaks_at_step_k)
    losses, params = _train_tiny_net(True, steps, step_now)
    assert runs_per_step[0] > 0 and runs_per_step[broken_step:] == [0] * (steps - broken_step)
    assert not onednn.usable() and len(onednn.Convolution._cache) == 0
    warnings = _fallback_warnings(caplog)
    assert len(warnings) == 1 and f"{failing} broke" in warnings[0]
    np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
    for got, want in zip(params, want_params):
        _close(got, want.astype(np.float64), 1e-5)


def test_the_cache_keeps_the_latest_geometries_and_releases_the_evicted(fresh_onednn, monkeypatch):
    assert onednn.usable()
    destroyed = []
    lib = onednn.library().lib
    for name in ("dnnl_primitive_destroy", "dnnl_primitive_desc_destroy", "dnnl_memory_destroy",
                 "dnnl_memory_desc_destroy"):
        def counted(handle, name=name, real=getattr(lib, name)):
            status = real(handle)
            destroyed.append((name, handle.value, status))
            return status
        monkeypatch.setattr(lib, name, counted)

    def get(n):
        return onednn.Convolution.get((n, 4, 6, 6), (4, 4, 3, 3), False, (1, 1), (1, 1, 1, 1), "NCHW")

    handles = {}
    for n in range(1, onednn.CACHE_SIZE + 4):
        handles[n] = set(get(n).handles)
    assert len(onednn.Convolution._cache) == onednn.CACHE_SIZE
    assert [key[0][0] for key in onednn.Convolution._cache] == list(range(4, onednn.CACHE_SIZE + 4))
    assert all(status == 0 for *_, status in destroyed)
    assert sorted((name, handle) for name, handle, _ in destroyed) == sorted(handles[1] | handles[2] | handles[3])
    assert all(len(handles[n]) >= 13 for n in handles)  # descriptors, primitives, memory objects

    get(4)  # used again: the oldest now is 5
    held = next(iter(onednn.Convolution._cache.values()))  # as an autograd op holds it
    assert held.key[0][0] == 5
    destroyed.clear()
    get(onednn.CACHE_SIZE + 4)
    assert 4 in {key[0][0] for key in onednn.Convolution._cache}
    assert 5 not in {key[0][0] for key in onednn.Convolution._cache}
    assert destroyed == []  # evicted, but it runs until its holder lets go
    x, w = np.ones((5, 4, 6, 6), np.float32), np.ones((4, 4, 3, 3), np.float32)
    y = np.zeros((5, 4, 6, 6), np.float32)
    held.forward(x.ctypes.data, w.ctypes.data, y.ctypes.data, onednn._numpy_scratch)
    assert y[0, 0, 2, 2] == 36 and y[0, 0, 0, 0] == 16
    del held
    assert sorted((name, handle) for name, handle, _ in destroyed) == sorted(handles[5])

    conv = get(6)
    destroyed.clear()
    conv.close()
    assert sorted((name, handle) for name, handle, _ in destroyed) == sorted(handles[6]) and conv.handles == []
    with pytest.raises(onednn.OneDNNError, match="closed"):
        conv.forward(x.ctypes.data, w.ctypes.data, y.ctypes.data, onednn._numpy_scratch)
    assert get(6) is not conv and len(get(6).handles) == len(handles[6])  # the cache makes it anew

    destroyed.clear()
    cached = set().union(*(conv.handles for conv in onednn.Convolution._cache.values()))
    del conv
    onednn.disable("test: releasing")  # switching off releases every cached geometry
    assert len(onednn.Convolution._cache) == 0
    assert sorted((name, handle) for name, handle, _ in destroyed) == sorted(cached)


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


@pytest.mark.slow
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


@pytest.mark.slow
def test_frozen_forward_gives_channels_last_features():
    from adkit.train.frozen import FrozenForward
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
            + "from adkit.core.runtime import tune_process\n"
            "tune_process(2)\n"
            "import paddle\n"
            "iomp = ctypes.CDLL(os.path.join(os.path.dirname(paddle.__file__), 'libs', 'libiomp5.so'))\n"
            "print(iomp.kmp_get_blocktime())\n")
    env = {k: v for k, v in os.environ.items() if k != "KMP_BLOCKTIME"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.slow
def test_a_foreign_libgomp_makes_paddles_openmp_threads_sleep_at_once():
    """torch imported first puts its libgomp in the global scope: Paddle's oneDNN then takes its
    threads from there, and Paddle's spinning libiomp5 threads must not hold the cores."""
    assert _blocktime_after_setup(preload=False) == 200  # Intel's default: one pool, untouched
    assert _blocktime_after_setup(preload=True) == 0
