import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from adkit.core.runtime import tune_process  # noqa: E402

# Paddle pins one thread unless told otherwise; the tests use the machine's two cores: two
# threads in one process, or one in each of pytest-xdist's two workers (pytest.ini: -n 2).
tune_process(int(os.environ.get("TEST_CPU_THREADS", "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2")))


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def brick_train_set():
    """Six brick training images at 64 px, loaded once (fit tests of the methods)."""
    from adkit.datasets import ImageDataset, MVTecCategory

    return ImageDataset(MVTecCategory(os.path.join(ROOT, "sample_data"), "brick").train_paths()[:6], 64).preload()


@pytest.fixture
def train_cfg():
    """``make(model, folder, option=value, ...)``: a resolved --mode train config at 64 px with a
    random backbone (no downloads), outputs in ``folder``."""
    from adkit.options.config import resolve_config

    def make(model, folder, **options):
        argv = ["--model", model, "--mode", "train", "--image_size", "64", "--backbone_weights", "none",
                "--output_dir", str(folder)]
        for key, value in options.items():
            argv += [f"--{key}", str(value)]
        return resolve_config(argv)

    return make
