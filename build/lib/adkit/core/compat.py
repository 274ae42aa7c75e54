"""The one place that knows Paddle 2.6 from 3.x (``paddlepaddle-gpu`` on PyPI is 2.6.2; ``pip
install paddlepaddle`` gives 3.x). The rest of the code calls these and never reads a version.

What differs, measured with the CPU wheels 2.6.2 and 3.3.1 (the GPU wheels share the Python API):
- ``paddle.jit.save`` writes ``.json`` (PIR) on 3.x and ``.pdmodel`` on 2.6; 2.6 cannot read a
  ``.json`` graph, 3.x reads both.
- ``inference.Config.enable_new_ir`` exists on 3.x only (2.6 has only the old IR).
- ``paddle.utils.dlpack.from_dlpack`` takes only a DLPack capsule on 2.6 (3.x also takes an
  object with ``__dlpack__``), and copies a CPU array there.
- paddle2onnx 2.x refuses Paddle < 3 at import; Paddle 2.6 needs paddle2onnx 1.x.
- (Written so that both work, no shim needed: ``Layer.eval()`` returns None on 2.6, so it is never
  chained; 2.6's ``to_static`` loses the implicit ``super()`` inside a rewritten ``forward``, so
  those calls name their class.)
"""
import importlib

from adkit.core.errors import UserError


def paddle_major():
    import paddle

    return int(paddle.__version__.split(".")[0])


def reads_pir_graphs():
    """Whether this Paddle (Inference) loads a PIR ``.json`` graph: 3.x (a dev build reports 0.0.0)."""
    return paddle_major() != 2


def use_old_ir(config):
    """Make a Paddle Inference ``Config`` run the old program IR (oneDNN int8 exists there only);
    2.6 has no other IR, and no switch."""
    if hasattr(config, "enable_new_ir"):
        config.enable_new_ir(False)


def runs_old_ir(config):
    """Whether a Paddle Inference ``Config`` runs the old program IR (always on 2.6)."""
    return not getattr(config, "new_ir_enabled", lambda: False)()


def tensor_view(array):
    """A paddle tensor of a C-contiguous numpy ``array``: shares its memory on Paddle 3 (PaDiM's
    inverse covariances run to gigabytes), a copy on 2.6."""
    import numpy as np
    import paddle

    return paddle.utils.dlpack.from_dlpack(np.ascontiguousarray(array).__dlpack__())


def import_paddle2onnx(option="--to_onnx"):
    """paddle2onnx, or one error line: not installed, or of a major version that refuses this
    Paddle (2.x needs Paddle 3; Paddle 2.6 works with paddle2onnx 1.x)."""
    import paddle

    try:
        module = importlib.import_module("paddle2onnx")
        importlib.import_module("onnx")  # paddle2onnx 1.x checks its output with it, undeclared
    except ImportError as err:
        raise UserError(f"{option} needs {err.name or 'paddle2onnx'}: pip install paddle2onnx onnx "
                        "onnxruntime") from None
    except ValueError:  # its own version check, raised while importing
        raise UserError(f"{option}: the installed paddle2onnx needs Paddle 3; with Paddle "
                        f"{paddle.__version__} install pip install 'paddle2onnx<2'") from None
    return module


def ptq_data_loader(batches):
    """``batches`` (a function returning an iterator of feed dicts) as the ``data_loader`` of
    ``PostTrainingQuantization``: 2.6 asserts a ``paddle.io.DataLoader`` but only calls it, 3.x
    takes the function itself. A DataLoader subclass that is just that call serves both."""
    from paddle import io

    class FeedBatches(io.DataLoader):
        def __init__(self):  # noqa: the DataLoader's own set-up (a dataset, workers) is not wanted
            pass

        def __call__(self):
            return batches()

    return FeedBatches()
