"""EfficientAD's networks: the patch description network (PDN) that teacher and student share,
and the autoencoder; loading the published torch teachers into the PDN.

The student has twice the teacher's channels: the first half imitates the teacher, the second
half the autoencoder.
"""
import math

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from adkit.core.errors import UserError
from adkit.core.image_io import image_hw, size_text
from adkit.train import onednn_layers

from ..graph_ops import (bilinear_resize)


TEACHER_CHANNELS = 384

# PDN layers in forward order: ("conv", width, kernel, padding in the padded variant) or
# ("pool",). width None = the network's out_channels. ReLU follows every conv but the last.
_PDN_LAYERS = {
    "small": (("conv", 128, 4, 3), ("pool",), ("conv", 256, 4, 3), ("pool",),
              ("conv", 256, 3, 1), ("conv", None, 4, 0)),
    "medium": (("conv", 256, 4, 3), ("pool",), ("conv", 512, 4, 3), ("pool",),
               ("conv", 512, 1, 0), ("conv", 512, 3, 1), ("conv", None, 4, 0),
               ("conv", None, 1, 0)),
}


def _conv(in_channels, out_channels, kernel, stride=1, padding=0):
    """Conv2D initialised as torch's default (uniform +-1/sqrt(fan_in) for weight and bias);
    ``kernel``: a side or (height, width).

    Paddle's default (Kaiming normal, zero bias) starts the unnormalised PDN/AE stacks at a
    different scale than the reference implementation; training is meant to match it. Training
    on the CPU switches it to oneDNN's kernels (adkit.train.onednn_layers).
    """
    kernel_area = kernel * kernel if isinstance(kernel, int) else kernel[0] * kernel[1]
    bound = 1.0 / math.sqrt(in_channels * kernel_area)
    init = nn.initializer.Uniform(-bound, bound)
    return onednn_layers.Conv2D(in_channels, out_channels, kernel, stride=stride, padding=padding,
                                weight_attr=paddle.ParamAttr(initializer=init),
                                bias_attr=paddle.ParamAttr(initializer=init))


def _pdn_layers(size):
    if size not in _PDN_LAYERS:
        raise UserError(f"PDN size must be one of {', '.join(_PDN_LAYERS)}, got {size!r}")
    return _PDN_LAYERS[size]


def pdn_out_size(input_side, size="small", padding=False):
    """The PDN feature map's extent along one axis of the input (256 -> 56 unpadded, 64
    padded): its convs and pools act on each axis alike."""
    side = input_side
    for layer in _pdn_layers(size):
        if layer[0] == "conv":
            pad = layer[3] if padding else 0
            side = side + 2 * pad - layer[2] + 1
        else:
            side = (side + 2 * (1 if padding else 0) - 2) // 2 + 1
        if side < 1:
            raise UserError(f"an input side of {input_side} px is too small for the PDN")
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
                self._last_padding = pad if padding else 0  # ends as the last conv's (channel ranges)
                setattr(self, name, _conv(in_channels, width, kernel, padding=self._last_padding))
                order.append((name, n_seen_convs < n_convs))
                in_channels = width
            else:
                n_seen_pools += 1
                name = f"avgpool{n_seen_pools}"
                setattr(self, name, nn.AvgPool2D(2, stride=2, padding=1 if padding else 0,
                                                 exclusive=False))
                order.append((name, False))
        self._order = tuple(order)

    def forward(self, x, channels=None):
        """``channels=(start, stop)``: only those output channels. Training uses one half of
        the student per input (the teacher half on the image, the autoencoder half on the
        jittered one); computing only that half of the last conv halves its cost in both
        directions and gives the same values and gradients as slicing the full output."""
        last = len(self._order) - 1
        for index, (name, relu) in enumerate(self._order):
            layer = getattr(self, name)
            if index == last and channels is not None:
                x = onednn_layers.conv2d(x, _rows(layer.weight, *channels), _rows(layer.bias, *channels),
                                         padding=self._last_padding, use_onednn=layer.use_onednn)
            else:
                x = layer(x)
            if relu:
                x = F.relu(x)
        return x


def _rows(tensor, start, stop):
    """tensor[start:stop] along axis 0 through split, not slicing: Paddle's slice backward took
    ~35 ms on the student's last conv weight, split's ~6 ms. (No empty sections: Paddle 2.6
    cannot backpropagate through them.)"""
    sections = [size for size in (start, stop - start, tensor.shape[0] - stop) if size]
    if len(sections) == 1:
        return tensor
    return paddle.split(tensor, sections)[1 if start else 0]


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


def autoencoder_upsample_sizes(input_side):
    """The decoder's six bilinear upsample sizes along one axis: the paper's (3, 8, 15, 32, 63,
    127) at 256 px, scaled by input_side / 256 (rounded half up) for other sides."""
    scale = input_side / 256
    return tuple(max(1, int(s * scale + 0.5)) for s in (3, 8, 15, 32, 63, 127))


class AutoEncoder(nn.Layer):
    """The EfficientAD autoencoder: 6 strided convs to a 64x1x1 code, then bilinear upsampling
    and convs back to a 384-channel map of the PDN's size.

    At image_size 256 this is exactly the paper's network (final encoder kernel 8, upsample
    sizes 3..127, output 56x56). Other sizes (a side or (height, width)), per axis: the final
    encoder kernel is side // 32 (so the code stays 1x1), the upsample sizes scale with
    side / 256, and the output is the PDN's (``out_size``, by default PDN-S's).
    """

    def __init__(self, image_size=256, out_size=None, out_channels=TEACHER_CHANNELS):
        super().__init__()
        height, width = image_hw(image_size)
        if min(height, width) < 32:
            raise UserError(f"--image_size {size_text(image_size)} is too small for the autoencoder")
        self.out_size = image_hw(out_size or (pdn_out_size(height), pdn_out_size(width)))
        self.upsample_sizes = tuple(zip(autoencoder_upsample_sizes(height),
                                        autoencoder_upsample_sizes(width)))
        widths = (3, 32, 32, 64, 64, 64)
        for i in range(5):
            setattr(self, f"enconv{i + 1}", _conv(widths[i], widths[i + 1], 4, 2, 1))
        self.enconv6 = _conv(64, 64, (height // 32, width // 32))
        for i in range(6):
            setattr(self, f"deconv{i + 1}", _conv(64, 64, 4, 1, 2))
        self.deconv7 = _conv(64, 64, 3, 1, 1)
        self.deconv8 = _conv(64, out_channels, 3, 1, 1)
        self.dropout = nn.Dropout(0.2)

    def forward(self, x):
        for i in range(1, 6):
            x = F.relu(getattr(self, f"enconv{i}")(x))
        x = self.enconv6(x)
        for i, hw in enumerate(self.upsample_sizes):
            x = bilinear_resize(x, hw)
            x = self.dropout(F.relu(getattr(self, f"deconv{i + 1}")(x)))
        x = bilinear_resize(x, self.out_size)
        return self.deconv8(F.relu(self.deconv7(x)))
