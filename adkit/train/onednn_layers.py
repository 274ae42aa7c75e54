"""Convolution layers whose dygraph forward and backward on the CPU can run oneDNN's kernels
(adkit.core.onednn) instead of Paddle's im2col + sgemm, for training.

``Conv2D`` and ``Conv2DTranspose`` are Paddle's layers (same parameters, names and results to
float rounding) with a switch, ``use_onednn``:
- NCHW layers run oneDNN while ``onednn_convolutions(...)`` is on (fit turns it on around
  training): oneDNN reorders the activations to its blocked layout and back, as torch does;
  the fastest choice at batch 1 (EfficientAD: the autoencoder's convolutions 1.4-2.6x faster).
- NHWC layers run oneDNN always: a network built channels-last (RD4AD's training twin) needs
  no reorders of its activations; the fastest choice at batch 16.
Anything else (a static graph, a GPU, another dtype, groups, dilation, padding modes, or oneDNN
off in this process: ``adkit.core.onednn.usable()``, which self-checks the library on first use)
runs Paddle's own layer code.

A oneDNN error during training does not stop it: the failing call (a forward or a backward) is
redone with Paddle's kernels, so the step's result is Paddle's, and ``onednn.disable`` switches
the process to Paddle's kernels with one warning.
"""
import contextlib

import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.autograd import PyLayer

from adkit.core import onednn


def available():
    """Whether oneDNN's convolutions run in this process (the first call self-checks the
    library; a failure logs one warning and the answer is False from then on)."""
    return onednn.usable()


def _empty(shape):
    return paddle.empty(list(shape), dtype="float32")


def _scratch(nbytes):
    buffer = _empty([(int(nbytes) + 3) // 4])
    return buffer, buffer.data_ptr()


def _dense(tensor):
    return tensor if tensor.is_contiguous() else tensor.contiguous()


def _nchw(shape, layout):
    n, a, b, c = shape
    return (n, c, a, b) if layout == "NHWC" else (n, a, b, c)


def _paddle_padding(padding):
    top, left, bottom, right = padding
    return [top, bottom, left, right]


def _paddle_conv(x, weight, bias, stride, padding, layout):
    return F.conv2d(x, weight, bias, stride=list(stride), padding=_paddle_padding(padding), data_format=layout)


def _paddle_conv_transpose(x, weight, stride, padding, layout):
    return F.conv2d_transpose(x, weight, None, stride=list(stride), padding=_paddle_padding(padding),
                              data_format=layout)


def _paddle_grads(function, inputs, needs, dy):
    """The gradients of ``function(*inputs)`` for the output gradient ``dy`` by Paddle's autograd
    (None where ``needs`` is False): an op's backward when oneDNN cannot do it."""
    with paddle.set_grad_enabled(True):
        leaves = []
        for tensor, need in zip(inputs, needs):
            leaf = tensor.detach()
            leaf.stop_gradient = not need
            leaves.append(leaf)
        wanted = [leaf for leaf, need in zip(leaves, needs) if need]
        grads = iter(paddle.grad([function(*leaves)], wanted, [dy]) if wanted else [])
    return tuple(next(grads) if need else None for need in needs)


class _Convolution(PyLayer):
    """y = conv(x, w) + b in ``layout``, with oneDNN's backward passes (dx only when needed);
    Paddle's kernels when oneDNN is off or fails."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, layout):
        x = _dense(x)
        ctx.args, ctx.has_bias = (stride, padding, layout), bias is not None
        ctx.needs = (not x.stop_gradient, not weight.stop_gradient,
                     bias is not None and not bias.stop_gradient)
        ctx.save_for_backward(*((x, weight) if bias is None else (x, weight, bias)))
        ctx.conv = None
        if onednn.usable():
            try:
                conv = onednn.Convolution.get(_nchw(x.shape, layout), weight.shape, bias is not None, stride,
                                              padding, layout)
                y = _empty(conv.dst_shape)
                conv.forward(x.data_ptr(), weight.data_ptr(), y.data_ptr(), _scratch,
                             None if bias is None else bias.data_ptr())
                ctx.conv = conv
                return y
            except Exception as err:  # noqa: BLE001 - any failure: this call and the rest on Paddle's
                onednn.disable(onednn.failure("a oneDNN convolution forward", err))
        return _paddle_conv(x, weight, bias, stride, padding, layout)

    @staticmethod
    def backward(ctx, dy):
        saved = ctx.saved_tensor()
        if ctx.conv is not None and onednn.usable():
            try:
                return _Convolution._onednn_backward(ctx, saved[0], saved[1], _dense(dy))
            except Exception as err:  # noqa: BLE001
                onednn.disable(onednn.failure("a oneDNN convolution backward", err))

        def conv(x, weight, bias=None):
            return _paddle_conv(x, weight, bias, *ctx.args)

        return _paddle_grads(conv, saved, ctx.needs[:len(saved)], dy)

    @staticmethod
    def _onednn_backward(ctx, x, weight, dy):
        conv = ctx.conv
        dx = dw = db = None
        if ctx.needs[0]:
            dx = _empty(x.shape)
            conv.backward_data(dy.data_ptr(), weight.data_ptr(), dx.data_ptr(), _scratch)
        if ctx.needs[1] or ctx.needs[2]:
            dw = _empty(weight.shape)
            db = _empty([weight.shape[0]]) if ctx.has_bias else None
            conv.backward_weights(x.data_ptr(), dy.data_ptr(), dw.data_ptr(), _scratch,
                                  None if db is None else db.data_ptr())
            dw = dw if ctx.needs[1] else None
            db = db if ctx.needs[2] else None
        return (dx, dw, db) if ctx.has_bias else (dx, dw)


class _TransposedConvolution(PyLayer):
    """y = conv_transpose(x, w) in ``layout``: the backward-data pass of the convolution that
    maps y's shape to x's with the same weights ([in, out, KH, KW] is that convolution's OIHW);
    Paddle's kernels when oneDNN is off or fails."""

    @staticmethod
    def forward(ctx, x, weight, out_size, stride, padding, layout):
        x = _dense(x)
        ctx.args, ctx.needs = (stride, padding, layout), (not x.stop_gradient, not weight.stop_gradient)
        ctx.save_for_backward(x, weight)
        ctx.conv = None
        if onednn.usable():
            try:
                n, out_h, out_w = out_size
                conv = onednn.Convolution.get((n, weight.shape[1], out_h, out_w), weight.shape, False, stride,
                                              padding, layout)
                if tuple(conv.dst_shape) != tuple(x.shape):
                    raise ValueError(f"transposed convolution of {x.shape} to {out_size}: shapes do not fit")
                y = _empty(conv.src_shape)
                conv.backward_data(x.data_ptr(), weight.data_ptr(), y.data_ptr(), _scratch)
                ctx.conv = conv
                return y
            except Exception as err:  # noqa: BLE001
                onednn.disable(onednn.failure("a oneDNN transposed convolution forward", err))
        return _paddle_conv_transpose(x, weight, stride, padding, layout)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensor()
        if ctx.conv is not None and onednn.usable():
            try:
                return _TransposedConvolution._onednn_backward(ctx, x, weight, _dense(dy))
            except Exception as err:  # noqa: BLE001
                onednn.disable(onednn.failure("a oneDNN transposed convolution backward", err))
        return _paddle_grads(lambda *inputs: _paddle_conv_transpose(*inputs, *ctx.args), (x, weight),
                             ctx.needs, dy)

    @staticmethod
    def _onednn_backward(ctx, x, weight, dy):
        conv = ctx.conv
        dx = dw = None
        if ctx.needs[0]:
            dx = _empty(x.shape)
            conv.forward(dy.data_ptr(), weight.data_ptr(), dx.data_ptr(), _scratch)
        if ctx.needs[1]:
            dw = _empty(weight.shape)
            conv.backward_weights(dy.data_ptr(), x.data_ptr(), dw.data_ptr(), _scratch)
        return dx, dw


def _pair(value):
    return [value, value] if isinstance(value, int) else list(value)[:2]


def _zero_padding(padding, padding_mode="zeros"):
    """(top, left, bottom, right) of Paddle's ``padding`` argument (an int, [h, w] or
    [top, bottom, left, right]), or None for what oneDNN is not given (strings, other modes)."""
    if isinstance(padding, str) or padding_mode != "zeros":
        return None
    if isinstance(padding, int):
        return (padding,) * 4
    padding = list(padding)
    if not all(isinstance(p, int) for p in padding):
        return None
    if len(padding) == 2:
        return (padding[0], padding[1], padding[0], padding[1])
    if len(padding) == 4:
        top, bottom, left, right = padding  # Paddle's order
        return (top, left, bottom, right)
    return None


def _onednn_takes(x):
    """Whether oneDNN can run on ``x`` here: dygraph, the CPU, float32, the library loaded."""
    return (paddle.in_dynamic_mode() and x.dtype == paddle.float32 and x.place.is_cpu_place()
            and available())


def _runs_onednn(x, groups=1, dilation=1, padding=None):
    """... and a convolution of these settings."""
    return (groups == 1 and all(d == 1 for d in _pair(dilation)) and padding is not None
            and _onednn_takes(x))


def conv2d(x, weight, bias=None, stride=1, padding=0, data_format="NCHW", use_onednn=False):
    """``F.conv2d(x, weight, bias, stride, padding, data_format=...)``; by oneDNN when
    ``use_onednn`` and it can (see the module's docstring)."""
    zero_padding = _zero_padding(padding)
    if not (use_onednn and _runs_onednn(x, padding=zero_padding)):
        return F.conv2d(x, weight, bias, stride=stride, padding=padding, data_format=data_format)
    return _Convolution.apply(x, weight, bias, tuple(_pair(stride)), zero_padding, data_format)


class Conv2D(nn.Conv2D):
    """``paddle.nn.Conv2D`` whose CPU dygraph passes are oneDNN's while ``use_onednn``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.use_onednn = self._data_format == "NHWC"

    def forward(self, x):
        padding = _zero_padding(self._padding, self._padding_mode)
        if not (self.use_onednn and _runs_onednn(x, self._groups, self._dilation, padding)):
            return nn.Conv2D.forward(self, x)  # named: Paddle 2.6's to_static loses bare super()
        return _Convolution.apply(x, self.weight, self.bias, tuple(_pair(self._stride)), padding,
                                  self._data_format)


class Conv2DTranspose(nn.Conv2DTranspose):
    """``paddle.nn.Conv2DTranspose`` whose CPU dygraph passes are oneDNN's while ``use_onednn``
    (not with an output size argument or output padding: the output size follows the input's)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.use_onednn = self._data_format == "NHWC"

    def forward(self, x, output_size=None):
        padding = _zero_padding(self._padding, self._padding_mode)
        if (not self.use_onednn or output_size is not None or any(_pair(self.output_padding))
                or not _runs_onednn(x, self._groups, self._dilation, padding)):
            return nn.Conv2DTranspose.forward(self, x, output_size)
        (stride_h, stride_w), (top, left, bottom, right) = _pair(self._stride), padding
        kh, kw = self.weight.shape[2:]
        n, h, w = (x.shape[0], *x.shape[1:3]) if self._data_format == "NHWC" else (x.shape[0], *x.shape[2:])
        out_size = (n, (h - 1) * stride_h + kh - top - bottom, (w - 1) * stride_w + kw - left - right)
        y = _TransposedConvolution.apply(x, self.weight, out_size, (stride_h, stride_w), padding,
                                         self._data_format)
        if self.bias is None:
            return y
        return y + (self.bias if self._data_format == "NHWC" else self.bias.reshape([1, -1, 1, 1]))


@contextlib.contextmanager
def onednn_convolutions(*layers, on=True):
    """Inside: every ``Conv2D`` / ``Conv2DTranspose`` of ``layers`` runs oneDNN (when ``on``);
    afterwards each is as it was, so evaluation and export see Paddle's layers unchanged."""
    convs = [sub for layer in layers for sub in layer.sublayers(include_self=True)
             if isinstance(sub, (Conv2D, Conv2DTranspose))]
    before = [conv.use_onednn for conv in convs]
    for conv in convs:
        conv.use_onednn = conv.use_onednn or on
    try:
        yield
    finally:
        for conv, state in zip(convs, before):
            conv.use_onednn = state
