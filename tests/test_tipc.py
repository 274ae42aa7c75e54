"""The TIPC shell pipeline: a real lite run of RD4AD end to end, and failures that must surface."""
import csv
import glob
import json
import math
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIPC = os.path.join(ROOT, "test_tipc")
SCRIPT = os.path.join(TIPC, "test_train_inference_python.sh")
SERVING_SCRIPT = os.path.join(TIPC, "test_serving_infer_python.sh")
COMPARE = os.path.join(TIPC, "compare_predictions.py")
RD4AD_CONFIG = os.path.join(TIPC, "configs", "rd4ad", "train_infer_python.txt")
MODE = "lite_train_lite_infer"
# The CPU half of the rd4ad inference grid: enable_mkldnn x cpu_threads x batch_size (x fp32).
CPU_GRID_RUNS = 2 * 2 * 2
GPU_GRID_RUNS = 2  # use_tensorrt false x batch_size 1|2 (x fp32)
INFER_IMAGES = sorted(glob.glob(os.path.join(ROOT, "sample_data", "brick", "test", "good", "*.png")))


def has_cuda():
    import paddle

    return paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0


def run_tipc(config, output_root, timeout=300, script=SCRIPT):
    # The config's `python:python` must be this interpreter.
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    return subprocess.run(["bash", script, str(config), MODE, str(output_root)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def results_lines(output_root):
    with open(os.path.join(output_root, "rd4ad", MODE, "results_python.log"), encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def config_with(tmp_path, old, new):
    with open(RD4AD_CONFIG, encoding="utf-8") as f:
        text = f.read()
    assert old in text
    path = tmp_path / "train_infer_python.txt"
    path.write_text(text.replace(old, new), encoding="utf-8")
    return path


def read_scores(path):
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [os.path.abspath(os.path.join(ROOT, r["path"])) for r in rows], [float(r["score"]) for r in rows]


@pytest.fixture(scope="module")
def lite_run(tmp_path_factory):
    output_root = tmp_path_factory.mktemp("tipc")
    return run_tipc(RD4AD_CONFIG, output_root), output_root


@pytest.mark.slow
def test_lite_pipeline_runs_every_step_successfully(lite_run):
    proc, output_root = lite_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = results_lines(output_root)
    runs = [line for line in lines if line.startswith("Run ")]
    assert all(line.startswith("Run successfully with command - ") for line in runs), runs
    gpu = has_cuda()
    grid = CPU_GRID_RUNS + (GPU_GRID_RUNS if gpu else 0)
    # train, eval, export, the grid, the dygraph reference, the comparison
    assert len(runs) == 3 + grid + 2
    scripts = [re.search(r" - \S+ (\S+)", line).group(1) for line in runs]
    assert scripts == (["main.py", "main.py", "export_model.py"] + ["infer.py"] * grid
                       + ["main.py", "test_tipc/compare_predictions.py"])
    assert "--mode train" in runs[0] and "--mode eval" in runs[1] and "--mode infer" in runs[-2]
    others = [line for line in lines if not line.startswith("Run ")]
    assert others == ([] if gpu else ["skip gpu: no CUDA device (every --device gpu inference run)"])


@pytest.mark.slow
def test_every_grid_run_scores_the_images_as_the_dygraph_model(lite_run):
    # oneDNN on/off, 1 or 2 threads and batch 1 or 2 must not change the model's answer.
    _, output_root = lite_run
    mode_dir = os.path.join(output_root, "rd4ad", MODE)
    images, reference = read_scores(os.path.join(mode_dir, "train", "rd4ad", "brick", "infer",
                                                 "df_test.csv"))
    assert images == INFER_IMAGES and all(math.isfinite(s) for s in reference)
    tables = sorted(glob.glob(os.path.join(mode_dir, "infer_cpu_*", "df_test.csv")))
    assert len(tables) == CPU_GRID_RUNS
    for table in tables:
        run_images, scores = read_scores(table)
        assert run_images == INFER_IMAGES
        assert scores == pytest.approx(reference, rel=1e-3, abs=1e-4), table


@pytest.mark.slow
def test_the_serving_pipeline_serves_the_export_and_matches_infer(lite_run):
    """test_serving_infer_python.sh on the lite run's export: serve.py up, every test image
    posted (4 at a time) and scored as infer.py scores it, bad requests refused, SIGTERM exit 0."""
    _, output_root = lite_run
    proc = run_tipc(os.path.join(TIPC, "configs", "rd4ad", "serving_infer_python.txt"), output_root,
                    script=SERVING_SCRIPT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    folder = os.path.join(output_root, "rd4ad", MODE + "_serving")
    with open(os.path.join(folder, "results_serving.log"), encoding="utf-8") as f:
        runs = [line for line in f if line.startswith("Run ")]
    assert len(runs) == 5 and all(line.startswith("Run successfully with command - ") for line in runs), runs
    served, served_scores = read_scores(os.path.join(folder, "client", "df_test.csv"))
    reference, reference_scores = read_scores(os.path.join(folder, "infer", "df_test.csv"))
    test_images = sorted(glob.glob(os.path.join(ROOT, "sample_data", "brick", "test", "*", "*.png")))
    assert served == reference == test_images
    assert served_scores == pytest.approx(reference_scores, rel=1e-4, abs=1e-5)
    assert "bad requests: 3/3 with the expected status" in open(os.path.join(folder, "client.log")).read()


def test_the_serving_pipeline_without_an_export_says_what_to_run_first(tmp_path):
    proc = run_tipc(os.path.join(TIPC, "configs", "padim", "serving_infer_python.txt"), tmp_path,
                    script=SERVING_SCRIPT, timeout=60)
    assert proc.returncode == 2
    assert "no exported model; run test_tipc/test_train_inference_python.sh" in proc.stderr
    assert not os.path.exists(tmp_path / "padim")


@pytest.mark.slow
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


def test_a_step_past_its_timeout_is_stopped_and_fails(tmp_path):
    config = config_with(tmp_path, "step_timeout:lite_train_lite_infer=120|",
                         "step_timeout:lite_train_lite_infer=1|")
    proc = run_tipc(config, tmp_path / "out", timeout=60)
    assert proc.returncode == 1
    assert results_lines(tmp_path / "out")[0].startswith("Run failed with command - python main.py")
    assert re.search(r"TIMEOUT +[0-9.]+s  train", proc.stdout)
    with open(tmp_path / "out" / "rd4ad" / MODE / "train.log", encoding="utf-8") as f:
        assert f.read().endswith("tipc: stopped after the step_timeout of 1 s\n")


def test_unknown_config_key_is_rejected_before_anything_runs(tmp_path):
    config = config_with(tmp_path, "python:python\n", "python:python\namp:null\n")
    proc = run_tipc(config, tmp_path / "out", timeout=30)
    assert proc.returncode == 2
    assert "unknown key 'amp'" in proc.stderr
    assert not (tmp_path / "out").exists()


def write_predictions(folder, rows):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "df_test.csv")
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["path", "score", "label"]] + [[p, s, "good"] for p, s in rows])
    return path


@pytest.mark.parametrize("run_rows, agrees", [
    ([("a.png", "1.0005"), ("b.png", "2.0")], True),      # within rtol 1e-3
    ([("a.png", "1.002"), ("b.png", "2.0")], False),      # 2e-3 off
    ([("a.png", "1.0"), ("b.png", "nan")], False),        # not finite
    ([("b.png", "2.0"), ("a.png", "1.0")], False),        # other order
    ([("a.png", "1.0")], False),                          # an image missing
])
def test_compare_predictions_flags_runs_that_disagree(tmp_path, run_rows, agrees):
    reference = write_predictions(tmp_path / "ref", [("a.png", "1.0"), ("b.png", "2.0")])
    good = write_predictions(tmp_path / "good_run", [("a.png", "1.0"), ("b.png", "2.0")])
    other = write_predictions(tmp_path / "other_run", run_rows)
    proc = subprocess.run([sys.executable, COMPARE, "--reference", reference, good, other],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == (0 if agrees else 1)
    assert "agrees   good_run" in proc.stdout
    assert ("agrees   other_run" if agrees else "DIFFERS  other_run") in proc.stdout


def test_compare_predictions_rejects_a_malformed_file(tmp_path):
    reference = write_predictions(tmp_path / "ref", [("a.png", "1.0")])
    broken = tmp_path / "broken.csv"
    broken.write_text("path,value\na.png,1.0\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, COMPARE, "--reference", reference, str(broken)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "not a readable df_test.csv" in proc.stderr


def other_models():
    from adkit.options.registry import model_names

    return [name for name in model_names() if name != "rd4ad"]


# Every other model's own config, with the CPU grid cut to one point (the grid code is the one
# RD4AD's full run above exercises; the point here is each model's config and steps).
ONE_GRID_POINT = {"--enable_mkldnn:true|false": "--enable_mkldnn:true", "--cpu_threads:1|2": "--cpu_threads:2",
                  "--batch_size:1|2": "--batch_size:2"}


@pytest.mark.slow
@pytest.mark.parametrize("model", other_models())
def test_lite_pipeline_passes_for_every_other_model(tmp_path, model):
    with open(os.path.join(TIPC, "configs", model, "train_infer_python.txt"), encoding="utf-8") as f:
        text = f.read()
    for grid, point in ONE_GRID_POINT.items():
        assert grid in text, (model, grid)
        text = text.replace(grid, point)
    config = tmp_path / "train_infer_python.txt"
    config.write_text(text, encoding="utf-8")
    proc = run_tipc(config, tmp_path / "out")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(os.path.join(tmp_path, "out", model, MODE, "results_python.log"), encoding="utf-8") as f:
        runs = [line for line in f if line.startswith("Run ")]
    gpu_runs = 1 if has_cuda() else 0  # use_tensorrt false x batch 2
    assert len(runs) == 3 + 1 + gpu_runs + 2  # train, eval, export, the grid point, dygraph, compare
    assert all(line.startswith("Run successfully with command - ") for line in runs), runs


@pytest.mark.slow
def test_lite_pipeline_with_tiles(tmp_path):
    """PatchCore's tiled config (128-px tiles of the 256-px sample photos, 64-px model input):
    train -> eval -> export -> infer.py against main.py --mode infer, at one grid point."""
    with open(os.path.join(TIPC, "configs", "patchcore", "train_infer_python_tiles.txt"), encoding="utf-8") as f:
        text = f.read()
    assert "--tile_size:lite_train_lite_infer=128" in text
    for grid, point in ONE_GRID_POINT.items():
        text = text.replace(grid, point)
    config = tmp_path / "train_infer_python.txt"
    config.write_text(text, encoding="utf-8")
    proc = run_tipc(config, tmp_path / "out")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(os.path.join(tmp_path, "out", "patchcore", MODE, "results_python.log"), encoding="utf-8") as f:
        runs = [line for line in f if line.startswith("Run ")]
    assert len(runs) == 3 + 1 + (1 if has_cuda() else 0) + 2
    assert all(line.startswith("Run successfully with command - ") for line in runs), runs
    deploy = glob.glob(os.path.join(tmp_path, "out", "patchcore", MODE, "**", "deploy_config.json"), recursive=True)
    assert deploy and json.load(open(deploy[0], encoding="utf-8"))["tile_size"] == [128, 128]
