"""The training forward of a frozen network (a teacher, an encoder): no gradients, eval mode."""


class FrozenForward:
    """``layer(x)`` of a frozen layer that takes [N,3,H,W] float32: on the CPU through its static
    graph in Paddle Inference (adkit.core.static_graph), whose oneDNN convolutions run
    EfficientAD-S's teacher ~2.5x faster than dygraph; on a GPU the dygraph layer. Returns what
    the layer returns (a tensor, or a list of them); ``channels_last``: each 4-D output
    transposed to NHWC (inside the graph), for a channels-last student. The layer's weights are
    copied into the graph when this is made: make it again after they change."""

    def __init__(self, layer, image_size, device="cpu", cpu_threads=2, channels_last=False):
        from adkit.core.static_graph import layer_on_cpu

        self.layer, self.graph = _wrapped(layer, channels_last), None
        if device == "cpu":
            self.graph = layer_on_cpu(self.layer, image_size, cpu_threads)

    def __call__(self, x):
        import paddle

        if self.graph is None:
            with paddle.no_grad():
                return self.layer(x)
        outputs = [paddle.to_tensor(out) for out in self.graph.run_outputs(x.numpy())]
        return outputs[0] if len(outputs) == 1 else outputs


def _wrapped(layer, channels_last):
    """A wrapper for to_static to convert, so that ``layer`` itself stays a dygraph layer.
    (Its forward names nothing from enclosing functions: Paddle 2.6's to_static loses them.)"""
    import paddle

    class Forward(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.inner, self.channels_last = layer, channels_last

        def forward(self, x):
            out = self.inner(x)
            if not self.channels_last:
                return out
            if isinstance(out, (list, tuple)):
                return [o.transpose([0, 2, 3, 1]) for o in out]
            return out.transpose([0, 2, 3, 1])

    return Forward()
