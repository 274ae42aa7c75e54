"""`--help` of every script in the repository exits 0 with its usage on stdout and nothing on
stderr: the first thing a newcomer runs must not end in a traceback (a `%` in a help text once
reached argparse's formatting in benchmark/bench_train.py)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP_DIRS = {".git", ".venv", "tests", "output", "__pycache__"}
SOURCED = {os.path.join("test_tipc", "common_func.sh")}  # a library the pipelines source, not run


def scripts():
    """Every Python file with a ``__main__`` block and every shell script, outside tests/."""
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(files):
            path = os.path.relpath(os.path.join(folder, name), ROOT)
            if name.endswith(".sh") and path not in SOURCED:
                found.append(path)
            elif name.endswith(".py"):
                with open(os.path.join(ROOT, path), encoding="utf-8") as f:
                    if "__name__ == \"__main__\"" in f.read():
                        found.append(path)
    return found


def test_the_walk_finds_the_entry_points_tools_and_benchmarks():
    found = set(scripts())
    for expected in ("main.py", "export_model.py", "infer.py", "tools/prepare_dataset.py",
                     "benchmark/bench_train.py", "test_tipc/test_train_inference_python.sh",
                     "tools/make_default_teacher.sh", "test_tipc/compare_predictions.py"):
        assert expected in found, expected
    assert "test_tipc/common_func.sh" not in found


@pytest.mark.slow
@pytest.mark.parametrize("script", scripts())
def test_help_exits_0_with_usage_on_stdout(script):
    if script.endswith(".sh"):
        command = ["bash", script]
    elif os.path.isfile(os.path.join(ROOT, os.path.dirname(script), "__init__.py")):
        command = [sys.executable, "-m", script[:-3].replace(os.sep, ".")]  # a package's module
    else:
        command = [sys.executable, script]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    proc = subprocess.run(command + ["--help"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.strip() == "", proc.stderr[-2000:]
    assert len(proc.stdout.strip().splitlines()) >= 3
