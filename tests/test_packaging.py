"""The installable package (pyproject.toml): what a wheel holds, the Python API from any folder
once installed, and a library that leaves its host process alone."""
import glob
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = os.path.join(ROOT, "sample_data", "brick", "test", "good", "000.png")
# what the wheel is built from (pyproject.toml names the rest of the checkout nowhere)
PACKAGED = ("pyproject.toml", "README.md", "requirements-paddle.txt", "requirements-base.txt",
            "adkit", "models", "datasets", "configs", "weights")


def installed_name(folder):
    """The dotted name a package folder of the checkout gets in the installed package."""
    parts = os.path.relpath(folder, ROOT).split(os.sep)
    return ".".join(parts if parts[0] == "adkit" else ["adkit"] + parts)


@pytest.mark.skipif(tomllib is None, reason="reading pyproject.toml needs Python 3.11's tomllib")
def test_pyproject_lists_every_package_folder_under_its_installed_name():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as file:
        tool = tomllib.load(file)["tool"]["setuptools"]
    folders = [os.path.dirname(path) for top in ("adkit", "models", "datasets")
               for path in glob.glob(os.path.join(ROOT, top, "**", "__init__.py"), recursive=True)]
    data = {"adkit.configs", "adkit.weights"}
    assert sorted(tool["packages"]) == sorted({installed_name(f) for f in folders} | data)
    assert tool["package-dir"] == {"adkit.models": "models", "adkit.datasets": "datasets",
                                   "adkit.configs": "configs", "adkit.weights": "weights"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The package as `pip install .` installs it (built as a wheel, installed into a folder of
    its own; the dependencies are this environment's)."""
    base = tmp_path_factory.mktemp("installed")
    source = base / "source"  # a copy: building writes build/ and *.egg-info beside pyproject.toml
    source.mkdir()
    for name in PACKAGED:
        path = os.path.join(ROOT, name)
        if os.path.isdir(path):
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(path, source / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(base / "wheel"),
                            str(source)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    [wheel] = glob.glob(str(base / "wheel" / "*.whl"))
    target = base / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                              wheel], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    return target


@pytest.mark.slow
def test_the_wheel_installs_adkit_alone_at_the_top(installed):
    top = {name for name in os.listdir(installed) if not name.endswith((".dist-info", ".egg-info"))} - {"bin"}
    assert top == {"adkit"}  # no top-level `models` or `datasets`
    for inside in ("models/patchcore/spec.py", "datasets/mvtec.py", "configs/patchcore.yaml",
                   "weights/teacher_small.pdparams", "deploy/serving/page.html"):
        assert os.path.isfile(installed / "adkit" / inside), inside
    assert {"adkit", "adkit-export", "adkit-infer", "adkit-serve"} <= set(os.listdir(installed / "bin"))


@pytest.mark.slow
def test_installed_commands_and_the_python_api_work_from_another_folder(installed, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(installed)  # and not the checkout: cwd is a fresh folder

    def run(*argv):
        done = subprocess.run([sys.executable, *argv], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    run("-m", "adkit.commands.main", "--model", "patchcore", "--mode", "train", "--data_dir",
        os.path.join(ROOT, "sample_data"), "--cls", "brick", "--image_size", "64", "--output_dir", "out")
    run("-m", "adkit.commands.export", "--model", "patchcore", "--checkpoint_dir", "out/patchcore/brick",
        "--save_dir", "export")
    out = run("-c", textwrap.dedent(f"""
        import adkit
        from adkit import Predictor
        assert adkit.__file__.startswith({str(installed)!r}), adkit.__file__
        result = Predictor("export").predict({IMAGE!r})
        print(result.score, *result.map.shape)
        """))
    from adkit import Predictor  # the checkout's, in this process: the same graph gives the same score
    from adkit.core.image_io import read_rgb

    score, height, width = out.split()
    assert (int(height), int(width)) == read_rgb(IMAGE).shape[:2]
    assert float(score) == pytest.approx(Predictor(str(tmp_path / "export")).predict(IMAGE).score, rel=1e-5)


HOST_CHECK = """
import logging, os, signal, sys, warnings
import numpy as np
import paddle  # the host's own imports: Paddle sets OMP_NUM_THREADS, scipy a warnings filter
import scipy.special

def snapshot():
    return {"environ": dict(os.environ), "signals": {s: signal.getsignal(s) for s in signal.valid_signals()},
            "root log": (logging.root.level, list(logging.root.handlers)),
            "loggers": {n: logging.getLogger(n).level for n in ("adkit", "paddle", "uvicorn")},
            "warnings": list(warnings.filters)}

before = snapshot()
from adkit.core import runtime
for step in ("keep_freed_memory", "mkl_dispatch_for_amd", "set_math_library_threads", "quiet_paddle_logs",
             "keep_openmp_pools_apart", "quiet_paddle_warnings", "use_cpu_threads", "tune_process"):
    setattr(runtime, step, lambda *a, _step=step, **k: sys.exit("the library called " + _step))
import adkit
from adkit import Predictor
predictor = Predictor(sys.argv[1], cpu_threads=1)
result = predictor.predict(np.full((64, 64, 3), 128, np.uint8))
after = snapshot()
changed = [key for key in before if before[key] != after[key]]
print("changed:", changed, [k for k in after["environ"] if before["environ"].get(k) != after["environ"][k]])
"""


@pytest.mark.slow
def test_importing_adkit_and_predicting_leave_the_host_process_alone(tmp_path):
    train = [sys.executable, os.path.join(ROOT, "main.py"), "--model", "patchcore", "--mode", "train",
             "--data_dir", os.path.join(ROOT, "sample_data"), "--cls", "brick", "--image_size", "64",
             "--output_dir", str(tmp_path)]
    assert subprocess.run(train, capture_output=True, timeout=600).returncode == 0
    script = tmp_path / "host.py"
    script.write_text(HOST_CHECK)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "patchcore" / "brick")], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "changed: [] []"

