"""Frozen, pretrained feature extractors: ``build_encoder(name, weights)`` -> a Layer mapping an
RGB image in [0,1] to three feature maps at strides 4, 8 and 16 (``.channels`` gives their
widths). Used as RD4AD's teacher; never trained, so it must never leave eval mode.
"""
import contextlib
import hashlib

import numpy as np
import paddle
import paddle.nn as nn

from adkit.core.errors import UserError
from adkit.core.progress import log
from adkit.train.weights import load_into_layer, resolve_backbone_weights

from . import resnet
from ..graph_ops import imagenet_normalize

EFFICIENTNET_VARIANTS = {"efficientnet_lite0": "lite0", "efficientnet_lite2": "lite2"}
ENCODER_NAMES = tuple(resnet.RESNETS) + tuple(EFFICIENTNET_VARIANTS)
# Random-init encoders ('none' weights) are drawn from this seed, so the same untrained encoder
# is rebuilt when a model trained on it is loaded again.
RANDOM_INIT_SEED = 0


class FrozenEncoder(nn.Layer):
    """``net`` with gradients off and eval mode pinned; optionally ImageNet-normalises the input.

    ``paddle.nn.Layer.train()`` on a parent sets ``training`` on every sublayer directly instead
    of calling their ``train()``, so overriding ``train`` alone is not enough: ``forward`` also
    puts the network back into eval mode if a parent switched it.
    """

    def __init__(self, net, normalize_input):
        super().__init__()
        self.net = net
        self.channels = tuple(int(c) for c in net.channels)
        self.normalize_input = normalize_input
        for param in self.parameters():
            param.stop_gradient = True
        self._pin_eval()

    def _pin_eval(self):
        self.training = False
        for layer in self.sublayers():
            layer.training = False
        return self

    def train(self, mode=True):
        """Frozen: stays in eval mode (BatchNorm keeps its ImageNet statistics)."""
        return self._pin_eval()

    def forward(self, x01):
        if self.training:
            self._pin_eval()
        x = imagenet_normalize(x01) if self.normalize_input else x01
        return self.net(x)


@contextlib.contextmanager
def _fixed_init_seed():
    """Draw random initial weights from RANDOM_INIT_SEED, leaving the caller's RNG untouched."""
    rng_state = paddle.get_rng_state()
    paddle.seed(RANDOM_INIT_SEED)
    try:
        yield
    finally:
        paddle.set_rng_state(rng_state)


def _load_resnet_weights(net, name, weights):
    found = resolve_backbone_weights(name, weights)
    if found is None:
        log.warning("backbone %s has RANDOM weights (--backbone_weights none): its features know "
                    "nothing of natural images, so anomaly maps will be poor; use this only for "
                    "tests and smoke runs", name)
        return
    # ImageNet checkpoints carry layer4 and the classifier, which this trunk omits.
    state = {k: v for k, v in found.state.items() if not k.startswith(resnet.UNUSED_PREFIXES)}
    load_into_layer(net, state, found.source, torch_layout=found.torch_layout)
    log.info("backbone %s: weights from %s", name, found.source)


def build_encoder(name, weights):
    """A frozen, eval-mode encoder ``forward(x01) -> [f1, f2, f3]`` with ``.channels``.

    ``weights``: see adkit.train.weights.resolve_backbone_weights (path, 'none', or None/'auto').
    """
    if name not in ENCODER_NAMES:
        raise UserError(f"--backbone {name}: unknown (choose {', '.join(ENCODER_NAMES)})")
    with _fixed_init_seed():
        if name in resnet.RESNETS:
            net = resnet.RESNETS[name]()
            _load_resnet_weights(net, name, weights)
        else:
            from .efficientnet_lite import EfficientNetLiteEncoder  # only when asked for

            net = EfficientNetLiteEncoder(EFFICIENTNET_VARIANTS[name], weights)
    return FrozenEncoder(net, normalize_input=name in resnet.RESNETS)


def encoder_fingerprint(encoder):
    """SHA-256 over the encoder's weights and BN statistics: tells whether a model is being
    reloaded with the very teacher it was trained against."""
    digest = hashlib.sha256()
    for name, value in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(value.numpy()).tobytes())
    return digest.hexdigest()


def encoder_record(backbone, weights, fingerprint):
    """What a checkpoint stores about the frozen encoder it was fit to (its ``extra`` entries,
    read back by ``check_same_encoder``)."""
    return {"backbone": backbone, "backbone_weights": weights or "auto", "encoder_sha256": fingerprint}


def check_same_encoder(fingerprint, saved, path, weights):
    """UserError unless an encoder's ``fingerprint`` is that of the weights a model was fit to
    (``saved``: the checkpoint's extra with backbone, backbone_weights, encoder_sha256)."""
    if fingerprint != saved["encoder_sha256"]:
        raise UserError(f"{path}: the {saved['backbone']} weights from {weights or 'auto'!r} "
                        "differ from the ones this model was trained with "
                        f"({saved['backbone_weights']!r}); pass that file with "
                        "--backbone_weights")
