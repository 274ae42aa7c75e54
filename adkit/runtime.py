"""Process set-up shared by every entry point: CPU threads, device and seeds.

``import paddle`` pins OMP_NUM_THREADS to 1 when it is unset (and prints a warning when it is
set higher), so entry points call ``set_cpu_threads`` first: it imports Paddle quietly and then
raises its OpenMP thread count explicitly.
"""
import os
import random
import warnings

import numpy as np

from .errors import UserError

_LIBRARY_THREAD_VARS = ("MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def import_paddle_quietly():
    """``import paddle`` without its ccache warning (irrelevant: we build no C++ extensions)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ccache.*")
        import paddle
    # Printed by every BatchNorm forward in training mode; says nothing the user can act on.
    warnings.filterwarnings("ignore", message="When training, we now always track global mean")
    return paddle


def set_cpu_threads(num_threads):
    """Use ``num_threads`` CPU threads in Paddle (dygraph) and the math libraries."""
    num_threads = int(num_threads)
    if num_threads < 1:
        raise UserError(f"--cpu_threads must be >= 1, got {num_threads}")
    for var in _LIBRARY_THREAD_VARS:
        os.environ[var] = str(num_threads)
    import_paddle_quietly()
    from paddle.base import core

    core.set_num_threads(num_threads)
    return num_threads


def cpu_threads_from_argv(argv, default=2):
    """Peek at ``--cpu_threads N`` before argparse runs (it must act before paddle loads)."""
    for i, arg in enumerate(argv):
        if arg == "--cpu_threads" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--cpu_threads="):
            value = arg.split("=", 1)[1]
        else:
            continue
        try:
            return int(value)
        except ValueError:
            raise UserError(f"--cpu_threads expects an integer, got {value!r}") from None
    return default


def set_device(device):
    """Select 'cpu' or 'gpu' for dygraph; a clear error if no GPU build/device is present."""
    import paddle

    if device == "gpu":
        if not paddle.device.is_compiled_with_cuda() or paddle.device.cuda.device_count() < 1:
            raise UserError("--device gpu: this Paddle build has no usable CUDA device; "
                            "install paddlepaddle-gpu on a machine with a GPU, or use --device cpu")
        paddle.set_device("gpu")
    elif device == "cpu":
        paddle.set_device("cpu")
    else:
        raise UserError(f"--device must be 'cpu' or 'gpu', got {device!r}")


def seed_everything(seed):
    import paddle

    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)
