"""The contract every anomaly-detection method in models/ fulfils.

Data flows one way: dataset -> method.fit -> checkpoint -> method.load -> inference_net.
``inference_net`` is the single implementation of the anomaly map: dygraph eval/infer call it
directly and export_model.py saves it with paddle.jit, so the three can never disagree.
"""


class AnomalyMethod:
    """Base class. ``cfg``: the resolved options every method shares (configs/<model>.yaml +
    CLI: image size, steps, lr, seed, ...); ``settings``: the method's own options, typed (the
    dataclass its spec declares, models/<method>/spec.py)."""

    name = "base"

    def __init__(self, cfg):
        from adkit.options.registry import method_settings

        self.cfg = cfg
        self.settings = method_settings(cfg)

    def fit(self, train_set, val_set, ckpt_dir, resume=False):
        """Train on ``train_set`` (good images); ``val_set`` is held-out good images.

        Both are ``datasets.ImageDataset``: ``len()``, ``[i] -> float32 [3,H,W] RGB in [0,1]``.
        Writes checkpoints atomically into ``ckpt_dir`` (a pathlib.Path that exists).
        """
        raise NotImplementedError

    def load(self, ckpt_dir):
        """Load the trained state written by ``fit`` (raises UserError if absent)."""
        raise NotImplementedError

    def inference_net(self):
        """An eval-mode paddle.nn.Layer: x [B,3,H,W] float32 RGB in [0,1] at the model size
        -> (anomaly map [B,1,H,W] float32 at the input size, image score [B] = max of the map)."""
        raise NotImplementedError

    def frozen_forward(self, layer, channels_last=False):
        """The training forward of a frozen network (a teacher, an encoder), made once its
        weights are final: its static graph in Paddle Inference on the CPU (oneDNN fuses each
        conv with its BN and ReLU), the dygraph layer on a GPU (adkit.train.frozen.FrozenForward);
        ``channels_last``: outputs in NHWC, for a student trained channels-last."""
        from adkit.train.frozen import FrozenForward

        return FrozenForward(layer, self.cfg["image_size"], self.cfg.get("device") or "cpu",
                             int(self.cfg.get("cpu_threads") or 2), channels_last)

    def trains_with_onednn(self):
        """Whether training runs its convolutions with oneDNN's kernels: on the CPU when the
        library inside Paddle's wheel can be used, unless ``--cpu_conv paddle``
        (adkit.train.onednn_layers)."""
        from adkit.train import onednn_layers

        on_cpu = (self.cfg.get("device") or "cpu") == "cpu"
        return on_cpu and self.cfg.get("cpu_conv", "onednn") == "onednn" and onednn_layers.available()
