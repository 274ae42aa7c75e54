"""Several processes (adkit.core.distributed) and --amp.

Paddle's CPU build runs its Gloo collectives with two local processes under
``python -m paddle.distributed.launch --nproc_per_node 2`` (``--devices 0,1`` needs GPUs), so
the tests below launch real two-process runs: a toy data-parallel training that must match one
process step for step (and survive Ctrl-C + --resume), teacher distillation matching one
process, RD4AD trained by two processes, sharded evaluation giving the metrics of one
process, and sharded inference giving one process's outputs.
"""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import paddle
import pytest

from adkit.core import distributed
from adkit.core.errors import UserError
from adkit.train.training import load_train_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "distributed_worker.py")
SAMPLE = os.path.join(ROOT, "sample_data")
needs_collectives = pytest.mark.skipif(not paddle.is_compiled_with_distribute(),
                                       reason="this Paddle build has no collective backend")


def launch(log_dir, *args, wait=True):
    """``python -m paddle.distributed.launch --nproc_per_node 2 ARGS`` in its own session (so a
    test can Ctrl-C the whole group, as a terminal does). Returns the Popen."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PADDLE_")}
    proc = subprocess.Popen([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node",
                             "2", "--log_dir", str(log_dir), *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    if wait:
        proc.output = proc.communicate(timeout=240)[0]
    return proc


def worker_logs(log_dir):
    return "\n".join(open(os.path.join(log_dir, f"workerlog.{r}")).read() for r in (0, 1))


def net_state(folder):
    return load_train_state(folder / "checkpoint.pdparams")


# -- one process: everything is the identity ------------------------------------------------

def test_one_process_changes_nothing():
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()
    assert distributed.shard(range(5)) == [0, 1, 2, 3, 4]
    maps, scores = np.zeros((3, 2, 2), np.float32), np.arange(3, dtype=np.float32)
    gathered = distributed.gather((maps, scores))
    assert gathered[0] is maps or np.shares_memory(gathered[0], maps)
    batch = np.arange(6)
    assert distributed.shard_rows(batch) is batch
    layer = paddle.nn.Linear(2, 2)
    assert distributed.data_parallel(layer) is layer
    distributed.barrier()
    assert distributed.mean_and_any({"total": 2.0}, True) == ({"total": 2.0}, True)


@pytest.mark.parametrize("n", [0, 1, 5, 7, 8, 13])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_blocks_cover_every_item_once_in_order(n, world):
    blocks = [distributed.block(n, r, world) for r in range(world)]
    assert [i for start, stop in blocks for i in range(start, stop)] == list(range(n))
    sizes = [stop - start for start, stop in blocks]
    assert max(sizes) - min(sizes) <= 1


def test_each_rank_takes_its_block_of_the_batch(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    assert distributed.shard_rows(np.arange(6)).tolist() == [3, 4, 5]
    assert distributed.shard(range(5)) == [3, 4]
    with pytest.raises(UserError, match="--batch_size 5: .* over the 2 processes; use a multiple of 2"):
        distributed.shard_rows(np.arange(5))


def test_local_blocks_see_one_process(monkeypatch):
    monkeypatch.setitem(distributed._state, "initialised", True)
    with distributed.local():
        assert distributed.world_size() == 1 and distributed.is_main()
        assert distributed.shard(range(4)) == [0, 1, 2, 3]


# -- --amp -------------------------------------------------------------------------------

@pytest.mark.slow
def test_amp_needs_a_gpu_and_says_so_in_one_line():
    done = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), "--model", "rd4ad",
                           "--mode", "train", "--amp", "bf16"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: --amp bf16 needs --device gpu: Paddle's CPU build ignores")


def test_amp_values_are_checked():
    from adkit.options.config import resolve_config

    with pytest.raises(UserError, match="--amp must be one of fp16, bf16, got 'fp32'"):
        resolve_config(["--model", "rd4ad", "--mode", "train", "--amp", "fp32", "--device", "gpu"])
    assert resolve_config(["--model", "rd4ad", "--mode", "train"])["amp"] is None


def test_fp16_needs_a_step_that_lets_the_trainer_scale_the_loss(tmp_path):
    """(On CPU the autocast and the scaler do nothing, but the trainer's checks still run.)"""
    from adkit.train.trainer import Trainer, set_mixed_precision
    from adkit.train.training import make_adam

    def toy(step_uses_trainer):
        net = paddle.nn.Linear(2, 1)
        optimizer = make_adam(net.parameters(), 0.01)
        trainer = Trainer("toy", tmp_path / "checkpoint.pdparams", {"net": net}, ("net",), optimizer,
                          total=2, seed=0, log_interval=1, save_interval=10)

        def step(batch, _seed):
            loss = paddle.mean(net(paddle.to_tensor(batch)) ** 2)
            if step_uses_trainer:
                trainer.optimise(loss)
            else:
                optimizer.clear_grad()
                loss.backward()
                optimizer.step()
            return {"total": float(loss)}

        return trainer, step

    data = lambda start: ((s, np.ones((2, 2), np.float32)) for s in range(start, 2))  # noqa: E731
    try:
        set_mixed_precision("fp16")
        trainer, step = toy(step_uses_trainer=False)
        with pytest.raises(UserError, match="--amp fp16: the toy training step does not use"):
            trainer.run(data, step)
        trainer, step = toy(step_uses_trainer=True)
        trainer.run(data, step)
        assert "amp_scaler" in load_train_state(tmp_path / "checkpoint.pdparams")
        set_mixed_precision("bf16")  # no scaler: any step runs
        trainer, step = toy(step_uses_trainer=False)
        trainer.run(data, step)
    finally:
        set_mixed_precision(None)


# -- two real processes ------------------------------------------------------------------

@pytest.mark.slow
@needs_collectives
def test_two_processes_train_as_one_and_survive_ctrl_c_and_resume(tmp_path):
    """Global batch 8 split 4 + 4, gradients averaged: the same updates as one process. A
    Ctrl-C to the launcher's group (SIGINT to all, then the launcher's SIGTERM) stops both
    after the same step with a checkpoint; --resume with two processes ends where one
    uninterrupted process does."""
    one = tmp_path / "one"
    done = subprocess.run([sys.executable, WORKER, str(one), "12"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]

    two = tmp_path / "two"
    proc = launch(tmp_path / "log_a", WORKER, two, 12, "--slow", 0.5, wait=False)
    deadline = time.monotonic() + 120
    while not (two / "running").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    proc.communicate(timeout=120)
    logs = worker_logs(tmp_path / "log_a")
    assert "interrupted at step" in logs, logs[-3000:]
    stopped = net_state(two)["step"]
    assert 3 <= stopped < 12

    proc = launch(tmp_path / "log_b", WORKER, two, 12, "--resume")
    assert proc.returncode == 0, proc.output[-3000:]
    a, b = net_state(one), net_state(two)
    assert b["step"] == 12
    for role in ("first", "second"):
        for name, value in a["nets"][role].items():
            np.testing.assert_allclose(b["nets"][role][name], value, rtol=1e-5, atol=1e-6,
                                       err_msg=f"{role}.{name}")
    np.testing.assert_allclose(b["losses"], a["losses"], rtol=1e-5)  # the global batch's loss
    with open(two / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert {float(row["rows"]) for row in rows} == {4.0}  # each process saw half of each batch


@pytest.mark.slow
@needs_collectives
def test_teacher_distillation_on_two_processes_matches_one(tmp_path):
    images = os.path.join(SAMPLE, "brick", "train", "good")
    done = subprocess.run([sys.executable, WORKER, "distill", images, str(tmp_path / "one")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    proc = launch(tmp_path / "log", WORKER, "distill", images, tmp_path / "two")
    assert proc.returncode == 0, proc.output[-3000:]
    a, b = net_state(tmp_path / "one"), net_state(tmp_path / "two")
    assert b["step"] == 2 and (tmp_path / "two" / "teacher_small.pdparams").is_file()
    for name, value in a["nets"]["student"].items():
        np.testing.assert_allclose(b["nets"]["student"][name], value, rtol=1e-4, atol=1e-6,
                                   err_msg=name)
    np.testing.assert_allclose(b["losses"], a["losses"], rtol=1e-5)


def read_metrics(out):
    path = os.path.join(out, "rd4ad", "brick", "eval_metrics.json")
    with open(path) as f:
        return json.load(f)


@pytest.mark.slow
@needs_collectives
def test_rd4ad_on_two_processes_and_sharded_eval_equals_one_process(tmp_path):
    out = tmp_path / "out"
    common = ["--model", "rd4ad", "--data_dir", SAMPLE, "--cls", "brick", "--output_dir", out,
              "--cpu_threads", "1", "--eval_batch_size", "4"]
    train = launch(tmp_path / "log_train", "main.py", *common, "--mode", "train", "--backbone",
                   "efficientnet_lite0", "--backbone_weights", "none", "--image_size", "64",
                   "--steps", "2", "--batch_size", "4")
    assert train.returncode == 0, train.output[-3000:]
    folder = out / "rd4ad" / "brick"
    assert net_state(folder)["step"] == 2
    assert {"calibration.json", "train_config.json", "train_log.csv"} <= set(os.listdir(folder))

    sharded = launch(tmp_path / "log_eval", "main.py", *common, "--mode", "eval")
    assert sharded.returncode == 0, sharded.output[-3000:]
    two = read_metrics(out)
    with open(folder / "eval" / "df_test.csv") as f:
        two_rows = list(csv.DictReader(f))
    done = subprocess.run([sys.executable, "main.py", *map(str, common), "--mode", "eval"],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    one = read_metrics(out)
    for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max", "f1_threshold"):
        assert two[key] == pytest.approx(one[key], rel=1e-6, abs=1e-9), key
    assert two["decision"] == one["decision"]
    with open(folder / "eval" / "df_test.csv") as f:
        one_rows = list(csv.DictReader(f))
    assert [r["path"] for r in two_rows] == [r["path"] for r in one_rows]
    np.testing.assert_allclose([float(r["score"]) for r in two_rows],
                               [float(r["score"]) for r in one_rows], rtol=1e-6)


def infer_tree(root):
    """brick's test images plus unreadable files and a same-stem pair (good/000.bmp is bad, so
    good/000.png is written as 000_1_*; stain/001.jpg and stain/001.png: 001_*, 001_1_*). At
    --eval_batch_size 2 the 21 paths are 11 batches: process 0 takes the first 6 (12 paths, two
    of them bad: its readable images pair up as one process pairs them), process 1 the rest
    (one bad), so even the maps equal one process's to the last bit."""
    tree = root / "tree"
    shutil.copytree(os.path.join(SAMPLE, "brick", "test"), tree)
    truncated = open(os.path.join(SAMPLE, "brick", "test", "good", "000.png"), "rb").read()[:500]
    for bad in ("good/000.bmp", "good/zz_bad.png", "stain/000.bmp"):
        (tree / bad).write_bytes(truncated)
    shutil.copy(tree / "good" / "001.png", tree / "stain" / "001.jpg")
    return tree


def infer_folder_contents(folder):
    files = {}
    for where, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(where, name)
            files[os.path.relpath(path, folder)] = path
    return files


def assert_same_infer_folders(one, two):
    a, b = infer_folder_contents(one), infer_folder_contents(two)
    assert sorted(b) == sorted(a)
    for rel, path in a.items():
        if rel.endswith(".npy"):
            np.testing.assert_allclose(np.load(b[rel]), np.load(path), rtol=1e-5, atol=1e-7,
                                       err_msg=rel)
        elif rel.endswith("_overlay.png"):  # one colour scale for all (from process 0)
            x, y = cv2.imread(path), cv2.imread(b[rel])
            assert x.shape == y.shape and (x != y).any(axis=2).mean() < 0.01, rel
        elif not rel.endswith(".png"):  # df_test.csv, df_training.csv, run.json
            assert open(b[rel], "rb").read() == open(path, "rb").read(), rel


def result_lines(text):
    return [line for line in text.splitlines() if "\t" in line]


@pytest.mark.slow
@needs_collectives
def test_sharded_infer_equals_one_process_and_a_failure_leaves_no_folder(tmp_path):
    """Two processes each score half of the batches into process 0's staging folder: the same
    files under the same names, df_test.csv rows and stdout lines (printed once, by process 0,
    in input order) as one process; with a calibrated model and with one whose overlays take
    their colour scale from the first batch. A bad image in process 1's half stops both: one
    error line, and no folder (nor staging folder) left."""
    out = tmp_path / "out"
    train = subprocess.run([sys.executable, "main.py", "--model", "padim", "--mode", "train",
                            "--data_dir", SAMPLE, "--cls", "brick", "--output_dir", str(out),
                            "--image_size", "64", "--backbone_weights", "none", "--cpu_threads", "1"],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert train.returncode == 0, train.stderr[-2000:]
    folder = out / "padim" / "brick"
    uncalibrated = tmp_path / "uncalibrated"
    shutil.copytree(out, uncalibrated)
    os.remove(uncalibrated / "padim" / "brick" / "calibration.json")

    bad = tmp_path / "bad"  # 4 paths, 2 batches: the bad one is process 1's
    bad.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        shutil.copy(os.path.join(SAMPLE, "brick", "test", "good", "000.png"), bad / name)
    (bad / "z.png").write_bytes(b"not an image")
    common = ["--model", "padim", "--cls", "brick", "--mode", "infer", "--cpu_threads", "1",
              "--eval_batch_size", "2"]
    failed = launch(tmp_path / "log_bad", "main.py", *common, "--output_dir", out, "--img_path", bad)
    assert failed.returncode != 0
    expected = f"error: {bad / 'z.png'}: cannot decode image (expected PNG/JPEG/BMP/TIFF/WebP)"
    assert expected in failed.output.splitlines(), failed.output[-3000:]
    main_log = open(tmp_path / "log_bad" / "workerlog.0").read()
    assert [line for line in main_log.splitlines() if "error" in line.lower()] == [expected]
    assert sorted(os.listdir(folder)) == ["calibration.json", "checkpoint.pdparams", "fitted.npz",
                                         "train_config.json"]  # no infer/, no .infer.tmp-*

    tree = infer_tree(tmp_path)
    for output_dir, extra in ((out, []), (uncalibrated, ["--threshold", "0.2"])):
        args = [*common, "--output_dir", str(output_dir), "--img_path", str(tree),
                "--skip_bad_images", *extra]
        one = subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
        assert one.returncode == 0, one.stderr[-3000:]
        infer_dir = output_dir / "padim" / "brick" / "infer"
        os.replace(infer_dir, tmp_path / "one_infer")
        log_dir = tmp_path / f"log_{output_dir.name}"
        two = launch(log_dir, "main.py", *args)
        assert two.returncode == 0, two.output[-3000:]
        lines = result_lines(one.stdout)
        assert len(lines) == 21 and [line.split("\t")[2] for line in lines] == sorted(
            str(p) for p in tree.rglob("*") if p.is_file())  # input order, skipped ones too
        assert result_lines(two.output) == lines
        assert not result_lines(open(log_dir / "workerlog.1").read())  # printed once
        assert_same_infer_folders(tmp_path / "one_infer", infer_dir)
        with open(infer_dir / "df_test.csv") as f:
            overlays = {row["path"]: row["overlay"] for row in csv.DictReader(f)}
        assert overlays[str(tree / "good" / "000.png")] == "good/000_1_overlay.png"
        assert overlays[str(tree / "stain" / "001.png")] == "stain/001_1_overlay.png"
        assert not [n for n in os.listdir(infer_dir.parent) if n.startswith(".")]
        shutil.rmtree(tmp_path / "one_infer")
