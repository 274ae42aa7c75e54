"""Frozen networks in training (EfficientAD's teacher, RD4AD's encoder) run as static graphs in
Paddle Inference on the CPU (adkit.train.frozen.FrozenForward): the same outputs as the
dygraph layer."""
import numpy as np
import paddle

from adkit.core.runtime import restore_cpu_threads
from adkit.train.frozen import FrozenForward
from adkit.models.backbones.encoders import build_encoder
from adkit.models.efficientad.networks import PDN

RNG = np.random.default_rng(5)


def test_the_teacher_graph_gives_the_dygraph_teacher_output():
    # the thread count engines restore, from the start (whatever earlier tests in this process
    # left): another count sums the convolutions in another order
    restore_cpu_threads()
    teacher = PDN("small", 32)
    teacher.eval()
    x = paddle.to_tensor(RNG.standard_normal((2, 3, 64, 64)), dtype="float32")
    frozen = FrozenForward(teacher, 64, cpu_threads=1)
    with paddle.no_grad():
        want = teacher(x).numpy()
    got = frozen(x)
    assert isinstance(got, paddle.Tensor) and got.stop_gradient
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    # the layer itself still runs in dygraph, differentiably
    x.stop_gradient = False
    again = teacher(x)
    again.sum().backward()
    np.testing.assert_allclose(again.numpy(), want, rtol=1e-6)
    assert x.grad is not None and float(paddle.abs(x.grad).sum()) > 0


def test_an_encoder_graph_returns_every_feature_map_in_order():
    encoder = build_encoder("resnet18", "none")
    x = paddle.to_tensor(RNG.random((2, 3, 64, 64)), dtype="float32")
    with paddle.no_grad():
        want = [f.numpy() for f in encoder(x)]
    got = FrozenForward(encoder, 64, cpu_threads=1)(x)
    assert [tuple(f.shape) for f in got] == [w.shape for w in want]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w, rtol=1e-4, atol=1e-5 * np.abs(w).max())


def test_off_the_cpu_the_dygraph_layer_runs():
    layer = paddle.nn.Conv2D(3, 4, 3)
    frozen = FrozenForward(layer, 16, device="gpu")  # no graph is built for a GPU
    assert frozen.graph is None
    x = paddle.to_tensor(RNG.standard_normal((1, 3, 16, 16)), dtype="float32")
    out = frozen(x)
    assert out.stop_gradient
    np.testing.assert_array_equal(out.numpy(), layer(x).numpy())
