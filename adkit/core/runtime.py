"""Process set-up: what every command does first (``tune_process``: CPU threads, memory reuse,
quiet logs), and device and seeds. The library itself changes nothing process-wide: only
``tune_process`` does, when a command or the application asks.

``import paddle`` pins OMP_NUM_THREADS to 1 when it is unset (and prints a warning when it is
set higher), so the thread count is set explicitly after Paddle loads (``use_cpu_threads``).
"""
import contextlib
import ctypes
import logging
import os
import random
import sys
import warnings

import numpy as np

from adkit.core.errors import UserError

_LIBRARY_THREAD_VARS = ("MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def import_paddle_quietly():
    """``import paddle`` without its ccache warning (irrelevant: we build no C++ extensions)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ccache.*")
        import paddle
    return paddle


def keep_freed_memory():
    """Make glibc malloc keep freed blocks for reuse instead of handing them back to the OS.

    Paddle's CPU allocator mallocs and frees every tensor on each run. glibc serves large blocks
    (> 32 MB always, smaller ones at first) with a fresh mmap and unmaps them on free, so every
    forward pass page-faults its activations in again: measured 16k faults per EfficientAD-S
    image in Paddle Inference (~8% of its time) and 118k in dygraph (~25%). Serving all blocks
    from the heap and never trimming it removes them; peak memory is unchanged, it is just not
    returned between runs. No effect (returns False) off Linux/glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc, e.g. musl
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def zeros_outside_heap(shape, dtype):
    """A zero-filled numpy array in its own anonymous memory map, not from malloc: with
    ``keep_freed_memory`` the heap never shrinks, so a gigabyte-sized array freed there would
    hold its pages for the rest of the run (PaDiM's statistics); this one is unmapped when the
    array goes away."""
    import mmap

    import numpy as np

    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    if size == 0:
        return np.zeros(shape, dtype)
    return np.frombuffer(mmap.mmap(-1, size), dtype=dtype).reshape(shape)


def mkl_dispatch_for_amd():
    """On AMD CPUs, make Paddle's MKL (mklml 2019.0.5, its BLAS for conv and matmul) use its
    AVX-512 (or AVX2) kernels instead of the generic code path it picks for non-Intel CPUs.

    MKL of that version honours ``MKL_DEBUG_CPU_TYPE`` (7: AVX-512 as on Skylake-SP, 5: AVX2),
    so this runs before ``import paddle``. Measured on an AMD EPYC (Zen 4, 2 threads): sgemm
    3.5-4x faster, conv2d forward+backward ~2x, training steps 3.5x (RD4AD-WRN50) to 6x
    (EfficientAD-S); per-op results change by float32 rounding only (another summation order).
    Intel CPUs are left alone (MKL dispatches correctly there), as is a value the user set (an
    empty ``MKL_DEBUG_CPU_TYPE=`` keeps MKL's own choice). Returns the value set, or None.
    """
    if "MKL_DEBUG_CPU_TYPE" in os.environ or not sys.platform.startswith("linux"):
        return None
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            text = cpuinfo.read(65536)
    except OSError:
        return None
    if "AuthenticAMD" not in text:
        return None
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    if {"avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl"} <= flags:
        value = "7"
    elif {"avx2", "fma"} <= flags:
        value = "5"
    else:
        return None
    os.environ["MKL_DEBUG_CPU_TYPE"] = value
    return value


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


def _global_openmp():
    """The file that gives ``GOMP_parallel`` to libraries through the process's global scope
    (None when no library there does, the usual case)."""
    try:
        process = ctypes.CDLL(None)
        address = ctypes.cast(process.GOMP_parallel, ctypes.c_void_p)
        info = _DlInfo()
        if not process.dladdr(address, ctypes.byref(info)) or not info.dli_fname:
            return None
    except (AttributeError, OSError):
        return None
    return os.path.realpath(info.dli_fname.decode())


def keep_openmp_pools_apart():
    """Stop two OpenMP thread pools from fighting over the cores. When a libgomp is in the
    process's global scope before Paddle loads (torch imported first brings its own), Paddle's
    oneDNN (its graphs, adkit.core.onednn) takes its threads from that libgomp while Paddle's
    other operators use Paddle's libiomp5, which by default spins for 200 ms after each parallel
    region: on 2 cores the spinning threads slowed oneDNN's training convolutions by 10-20%.
    Then libiomp5's threads sleep at once instead (``KMP_BLOCKTIME=0``, unless the user set it;
    called before ``import paddle``, since libiomp5 reads it when it starts). Returns the other
    runtime's file, or None (one pool, the usual case: nothing is changed)."""
    other = _global_openmp()
    if other is None or os.path.basename(other).startswith("libiomp5"):
        return None
    os.environ.setdefault("KMP_BLOCKTIME", "0")
    return other


_VERBOSE = False
_TUNED = False  # tune_process ran: Paddle's C++ notes on stdout/stderr are kept off the results
_CPU_THREADS = None  # what use_cpu_threads gave Paddle's dygraph, for restore_cpu_threads


def tune_process(cpu_threads=2, verbose=False):
    """Set up the whole process as adkit's commands run, before Paddle loads: each step below
    changes something process-wide, so the library never does it by itself; an application
    that embeds adkit calls this only if it wants the same (``adkit.tune_process``).

    - ``quiet_paddle_logs``: Paddle's C++ warnings off (unless ``verbose``): they say nothing a
      user can act on
    - ``keep_freed_memory``: glibc malloc keeps freed blocks (no page faults on every forward)
    - ``mkl_dispatch_for_amd``: MKL's AVX-512 kernels on AMD CPUs
    - ``set_math_library_threads``: MKL and OpenBLAS use ``cpu_threads`` threads
    - ``keep_openmp_pools_apart``: two OpenMP runtimes do not spin against each other
    - ``quiet_paddle_warnings``: a BatchNorm warning printed on every training step
    - ``use_cpu_threads``: import Paddle, and give dygraph ``cpu_threads`` threads

    From then on Paddle Inference's C++ notes are sent away from stdout while it runs
    (``framework_stdout_silenced``): without this call they go where Paddle writes them.
    """
    global _VERBOSE, _TUNED
    cpu_threads = checked_thread_count(cpu_threads)
    _VERBOSE, _TUNED = _VERBOSE or verbose, True
    if not _VERBOSE:
        quiet_paddle_logs()
    keep_freed_memory()
    mkl_dispatch_for_amd()
    set_math_library_threads(cpu_threads)
    keep_openmp_pools_apart()
    quiet_paddle_warnings()
    use_cpu_threads(cpu_threads)
    return cpu_threads


def checked_thread_count(num_threads):
    try:
        num_threads = int(num_threads)
    except (TypeError, ValueError):
        raise UserError(f"--cpu_threads must be an integer >= 1, got {num_threads!r}") from None
    if num_threads < 1:
        raise UserError(f"--cpu_threads must be >= 1, got {num_threads}")
    return num_threads


def quiet_paddle_logs():
    """Paddle's C++ log (glog) shows errors only; read when Paddle's core loads."""
    os.environ.setdefault("GLOG_minloglevel", "2")


def set_math_library_threads(num_threads):
    for var in _LIBRARY_THREAD_VARS:
        os.environ[var] = str(num_threads)


def quiet_paddle_warnings():
    """Printed by every BatchNorm forward in training mode; says nothing the user can act on."""
    warnings.filterwarnings("ignore", message="When training, we now always track global mean")


def use_cpu_threads(num_threads):
    """Paddle's dygraph runs on ``num_threads`` CPU threads (``import paddle`` pins OpenMP to one
    when OMP_NUM_THREADS is unset); ``restore_cpu_threads`` gives this count back after a Paddle
    Inference run lowers it."""
    global _CPU_THREADS
    num_threads = checked_thread_count(num_threads)
    import_paddle_quietly()
    from paddle.base import core

    core.set_num_threads(num_threads)
    _CPU_THREADS = num_threads
    return num_threads


def restore_cpu_threads():
    """Give dygraph back the thread count use_cpu_threads chose (nothing if it was never called).
    Creating a Paddle Inference predictor, and every run of it, leaves the calling thread's math
    library on fewer threads: dygraph's EfficientAD student forward + backward after a run took
    1.7x as long, a teacher forward after creating one 1.5x, until the count was set again; so
    adkit.core.static_graph.GraphRunner calls this after both."""
    if _CPU_THREADS is not None:
        from paddle.base import core

        core.set_num_threads(_CPU_THREADS)


def setup_logging():
    """Concise log lines on stderr (stdout carries results only). ``force``: Paddle installs a
    root handler of its own format on import, which would otherwise win."""
    handler = BarSafeHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


class BarSafeHandler(logging.StreamHandler):
    """On a terminal, a log line goes through ``tqdm.write``, which clears the progress bar,
    prints the line and draws the bar again, so a message (the Ctrl-C warning) does not land
    glued to the end of the bar. Elsewhere (files, pipes) a plain StreamHandler. Without a
    stream it writes to ``sys.stderr`` as it is at each line, not as it was at setup: a caller
    that swaps stderr (a test harness, a redirect) and closes the old one loses nothing."""

    def __init__(self, stream=None):
        super().__init__(stream)  # assigns self.stream (sys.stderr when None)
        self._fixed_stream = stream

    @property
    def stream(self):
        return sys.stderr if self._fixed_stream is None else self._fixed_stream

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ and setStream assign it
        self._fixed_stream = value

    def emit(self, record):
        try:
            on_terminal = self.stream.isatty()
        except (AttributeError, ValueError):  # no isatty, or a closed stream
            on_terminal = False
        if on_terminal:
            try:
                from tqdm import tqdm

                tqdm.write(self.format(record), file=self.stream)
                return
            except Exception:  # noqa: BLE001 - never lose a log line over the bar
                pass
        super().emit(record)


@contextlib.contextmanager
def _descriptor_redirected(fd, target):
    """File descriptor ``fd`` (1 or 2) points at descriptor ``target`` (None: /dev/null) inside
    the block: C++ code writes there directly, past Python's sys.stdout / sys.stderr."""
    (sys.stdout if fd == 1 else sys.stderr).flush()
    saved = os.dup(fd)
    target = os.open(os.devnull, os.O_WRONLY) if target is None else os.dup(target)
    os.dup2(target, fd)
    try:
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(target)


def framework_stdout_silenced():
    """Paddle Inference's C++ code prints notes (e.g. "ReduceMeanCheckIfOneDNNSupport") straight
    to file descriptor 1, between our result lines: send them to /dev/null (to stderr after
    --verbose) while Paddle runs. Only in a process set up by tune_process: moving a host
    application's file descriptors is not the library's business."""
    if not _TUNED:
        return contextlib.nullcontext()
    return _descriptor_redirected(1, 2 if _VERBOSE else None)


def framework_stderr_silenced(active=True):
    """oneDNN's int8 passes print their progress ("---    squashed 0 quantize op") straight to
    file descriptor 2, where a refusal or an error must be one line: drop it (unless not
    ``active``, --verbose, or a process tune_process did not set up)."""
    if not active or _VERBOSE or not _TUNED:
        return contextlib.nullcontext()
    return _descriptor_redirected(2, None)


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
