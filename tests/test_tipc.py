"""The TIPC shell pipeline: a real lite run of RD4AD end to end, and failures that must surface."""
import csv
import glob
import math
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "test_tipc", "test_train_inference_python.sh")
RD4AD_CONFIG = os.path.join(ROOT, "test_tipc", "configs", "rd4ad", "train_infer_python.txt")
MODE = "lite_train_lite_infer"
# The CPU half of the rd4ad inference grid: enable_mkldnn x cpu_threads x batch_size (x fp32).
CPU_GRID_RUNS = 2 * 2 * 2
GPU_GRID_RUNS = 2  # use_tensorrt false x batch_size 1|2 (x fp32)
INFER_IMAGES = sorted(glob.glob(os.path.join(ROOT, "sample_data", "brick", "test", "good", "*.png")))


def has_cuda():
    import paddle

    return paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0


def run_tipc(config, output_root, mode=MODE, timeout=300):
    # The config's `python:python` must be this interpreter.
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    return subprocess.run(["bash", SCRIPT, str(config), mode, str(output_root)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def results_lines(output_root, model="rd4ad", mode=MODE):
    with open(os.path.join(output_root, model, mode, "results_python.log"), encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def config_with(tmp_path, old, new):
    with open(RD4AD_CONFIG, encoding="utf-8") as f:
        text = f.read()
    assert old in text
    path = tmp_path / "train_infer_python.txt"
    path.write_text(text.replace(old, new), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def lite_run(tmp_path_factory):
    output_root = tmp_path_factory.mktemp("tipc")
    return run_tipc(RD4AD_CONFIG, output_root), output_root


def test_lite_pipeline_runs_every_step_successfully(lite_run):
    proc, output_root = lite_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = results_lines(output_root)
    runs = [line for line in lines if line.startswith("Run ")]
    assert all(line.startswith("Run successfully with command - ") for line in runs), runs
    gpu = has_cuda()
    assert len(runs) == 3 + CPU_GRID_RUNS + (GPU_GRID_RUNS if gpu else 0)
    steps = [re.search(r" - \S+ (\S+)", line).group(1) for line in runs]
    assert steps[:3] == ["main.py", "main.py", "export_model.py"]
    assert "--mode train" in runs[0] and "--mode eval" in runs[1]
    assert steps[3:] == ["infer.py"] * (len(runs) - 3)
    others = [line for line in lines if not line.startswith("Run ")]
    assert others == ([] if gpu else ["skip gpu: no CUDA device (every --device gpu inference run)"])


def test_every_grid_setting_scores_the_same_images_alike(lite_run):
    # oneDNN on/off, 1 or 2 threads and batch 1 or 2 must not change the model's answer.
    _, output_root = lite_run
    tables = sorted(glob.glob(os.path.join(output_root, "rd4ad", MODE, "infer_cpu_*", "predictions.csv")))
    assert len(tables) == CPU_GRID_RUNS
    scores = []
    for table in tables:
        with open(table, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        assert [os.path.abspath(os.path.join(ROOT, r["path"])) for r in rows] == INFER_IMAGES
        scores.append([float(r["score"]) for r in rows])
    reference = scores[0]
    assert all(math.isfinite(s) for s in reference)
    for table, other in zip(tables[1:], scores[1:]):
        assert other == pytest.approx(reference, rel=1e-3, abs=1e-4), table


def test_failing_training_makes_the_pipeline_fail(tmp_path):
    config = config_with(tmp_path, "--data_dir:lite_train_lite_infer=sample_data|",
                         "--data_dir:lite_train_lite_infer=no/such/folder|")
    proc = run_tipc(config, tmp_path / "out", timeout=120)
    assert proc.returncode == 1
    lines = results_lines(tmp_path / "out")
    assert lines[0].startswith("Run failed with command - python main.py --mode train")
    assert "--data_dir no/such/folder" in lines[0]
    assert lines[1:] == ["skip eval, export and inference: training failed"]
    assert "1 failed" in proc.stdout


def test_unknown_config_key_is_rejected_before_anything_runs(tmp_path):
    config = config_with(tmp_path, "python:python\n", "python:python\namp:null\n")
    proc = run_tipc(config, tmp_path / "out", timeout=30)
    assert proc.returncode == 2
    assert "unknown key 'amp'" in proc.stderr
    assert not (tmp_path / "out").exists()
