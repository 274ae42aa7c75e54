"""The GPU code paths against the installed Paddle's API, without a GPU.

No GPU is here, so these paths cannot run; what can be checked is that every call they make
exists in this Paddle and accepts the arguments the code passes. CI runs this file on Paddle
3.3.1 and 2.6.2 (the ``paddlepaddle-gpu`` on PyPI; its Python API is the CPU wheel's).
Paddle's C++ bindings check argument names and types before they run, so calling them on the
CPU build binds the arguments for real: a CPU build may then refuse the feature
(RuntimeError: "compile with TENSORRT"), which is fine; a TypeError or AttributeError is not.
"""
import inspect
import os
import subprocess
import sys

import paddle
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class BindingChecked:
    """Stands in for a Paddle object: each method the code calls is called on the real one;
    the CPU build's RuntimeError (feature not compiled in) is swallowed, anything else raises."""

    def __init__(self, real):
        self._real, self.calls = real, []

    def __getattr__(self, name):
        method = getattr(self._real, name)  # AttributeError: the method does not exist here

        def call(*args, **kwargs):
            self.calls.append(name)
            try:
                return method(*args, **kwargs)
            except RuntimeError:  # the arguments bound; this build lacks the feature
                return None

        return call


@pytest.fixture
def inference_config(tmp_path):
    from paddle import inference

    graph, params = tmp_path / "inference.json", tmp_path / "inference.pdiparams"
    graph.write_bytes(b"")
    params.write_bytes(b"")
    return inference.Config(str(graph), str(params))


@pytest.mark.parametrize("precision, use_tensorrt, expected", [
    ("fp32", False, ["enable_use_gpu"]),
    ("fp16", False, ["enable_use_gpu"]),
    ("fp16", True, ["enable_use_gpu", "enable_tensorrt_engine", "set_trt_dynamic_shape_info"]),
    ("fp32", True, ["enable_use_gpu", "enable_tensorrt_engine", "set_trt_dynamic_shape_info"]),
])
def test_inference_gpu_and_tensorrt_settings_bind_on_this_paddle(inference_config, precision,
                                                                  use_tensorrt, expected):
    from adkit.deploy.engines import configure_gpu

    checked = BindingChecked(inference_config)
    configure_gpu(checked, gpu_mem_mb=500, gpu_id=0, precision=precision, use_tensorrt=use_tensorrt,
                  max_batch_size=4, image_size=64)
    assert checked.calls == expected


def test_binding_check_catches_a_wrong_keyword(inference_config):
    """The check above can fail: a misspelt keyword is a TypeError from the binding."""
    with pytest.raises(TypeError):
        BindingChecked(inference_config).enable_tensorrt_engine(workspace_sizes=1 << 30)
    with pytest.raises(AttributeError):
        BindingChecked(inference_config).enable_gpu_please()


def bind(function, *args, **kwargs):
    """The arguments bound to ``function``'s Python signature (TypeError if they do not fit)."""
    return inspect.signature(function).bind(*args, **kwargs).arguments


def test_mixed_precision_calls_fit_this_paddle():
    """adkit/train/trainer.py: GradScaler(init_loss_scaling=), auto_cast(enable=, dtype=, level=),
    and the scaler methods the fp16 step and checkpoint call."""
    from adkit.train.trainer import AMP_MODES

    bind(paddle.amp.GradScaler, init_loss_scaling=2.0**15)
    for dtype in AMP_MODES.values():
        bind(paddle.amp.auto_cast, enable=True, dtype=dtype, level="O1")
    for method in ("scale", "step", "update", "state_dict", "load_state_dict"):
        assert callable(getattr(paddle.amp.GradScaler, method)), method
    assert set(AMP_MODES.values()) == {"float16", "bfloat16"}


def test_device_and_collective_calls_fit_this_paddle():
    """adkit/runtime.set_device and adkit/distributed (NCCL on GPUs, Gloo on CPU: the same calls)."""
    import paddle.distributed as dist
    from paddle.base import core

    assert isinstance(paddle.device.is_compiled_with_cuda(), bool)
    assert isinstance(paddle.device.cuda.device_count(), int)
    bind(paddle.set_device, "gpu")
    bind(dist.init_parallel_env)
    bind(dist.all_reduce, paddle.zeros([1]))
    bind(dist.all_gather_object, [], {"x": 1})
    bind(dist.broadcast_object_list, [None], src=0)
    bind(dist.gather, paddle.zeros([1]), [], dst=0)
    bind(paddle.DataParallel, paddle.nn.Linear(1, 1))
    assert callable(dist.get_world_size) and callable(dist.get_rank)
    assert callable(core.create_or_get_global_tcp_store)


def test_the_launcher_takes_the_flags_the_readme_shows():
    """`python -m paddle.distributed.launch --devices 0,1` (GPUs) and `--nproc_per_node N`."""
    proc = subprocess.run([sys.executable, "-m", "paddle.distributed.launch", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--devices" in proc.stdout and "--nproc_per_node" in proc.stdout
