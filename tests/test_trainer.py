"""The shared trainer: checkpoints, resume, and Ctrl-C that saves and says how to continue."""
import os
import re
import shlex
import signal
import subprocess
import sys

import numpy as np
import paddle
import pytest

from adkit.core.errors import UserError
from adkit.train.trainer import CHECKPOINT_FILE, Trainer, TrainingInterrupted
from adkit.train.training import make_adam, load_train_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)


def toy_run(folder, total, interrupt_at=None):
    paddle.seed(0)
    net = paddle.nn.Linear(4, 1)
    optimizer = make_adam(net.parameters(), 0.01)
    trainer = Trainer("toy", folder / CHECKPOINT_FILE, {"net": net}, ("net",), optimizer,
                      total=total, seed=5, log_interval=2, save_interval=100, extra={"note": "x"})

    def batches(start):
        for step in range(start, total):
            yield step, DATA[(step * 8) % 64:(step * 8) % 64 + 8]

    def train_step(batch, step_seed):
        noise = np.random.default_rng(step_seed).standard_normal((8, 1)).astype(np.float32)
        loss = paddle.mean((net(paddle.to_tensor(batch)) - paddle.to_tensor(noise)) ** 2)
        optimizer.clear_grad()
        loss.backward()
        optimizer.step()
        if trainer.step + 1 == interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C would, in the middle of a step
        return {"total": float(loss)}

    return trainer, net, batches, train_step


def test_ctrl_c_finishes_the_step_saves_and_resumes_bit_identically(tmp_path):
    straight, _ = run_to_end(tmp_path / "a", 10)
    trainer, net, batches, step = toy_run(tmp_path / "b", 10, interrupt_at=4)
    with pytest.raises(TrainingInterrupted, match="interrupted at step 4 of 10: checkpoint saved to"):
        trainer.run(batches, step)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    saved = load_train_state(tmp_path / "b" / CHECKPOINT_FILE)
    assert saved["step"] == 4 and len(saved["losses"]) == 4 and saved["extra"] == {"note": "x"}
    resumed, losses = run_to_end(tmp_path / "b", 10, resume=True)
    for name in straight:
        np.testing.assert_array_equal(resumed[name], straight[name], err_msg=name)
    np.testing.assert_array_equal(losses, load_train_state(tmp_path / "a" / CHECKPOINT_FILE)["losses"])


def run_to_end(folder, total, resume=False):
    trainer, net, batches, step = toy_run(folder, total)
    if resume:
        assert trainer.resume() == {"note": "x"}
    trainer.run(batches, step)
    state = load_train_state(folder / CHECKPOINT_FILE)
    assert state["step"] == total
    return {k: v.numpy() for k, v in net.state_dict().items()}, state["losses"]


def test_resume_needs_a_checkpoint_of_the_same_method(tmp_path):
    trainer, *_ = toy_run(tmp_path, 3)
    with pytest.raises(UserError, match=r"--resume: .*checkpoint.pdparams not found"):
        trainer.resume()
    run_to_end(tmp_path, 3)
    other, *_ = toy_run(tmp_path, 3)
    other.name = "other"
    with pytest.raises(UserError, match="is a toy checkpoint, not other"):
        other.resume()
    shorter, *_ = toy_run(tmp_path, 2)
    with pytest.raises(UserError, match="already at step 3, past the 2 steps"):
        shorter.resume()


@pytest.mark.slow
def test_ctrl_c_during_main_py_training_prints_the_command_that_continues(tmp_path):
    out = tmp_path / "out"
    args = ["--model", "rd4ad", "--mode", "train", "--data_dir", os.path.join(ROOT, "sample_data"),
            "--cls", "gravel", "--output_dir", str(out), "--image_size", "64", "--steps", "60",
            "--batch_size", "2", "--log_interval", "1", "--backbone", "efficientnet_lite0",
            "--backbone_weights", "none"]
    proc = subprocess.Popen([sys.executable, "main.py", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "rd4ad step 2/60" in line:
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read().strip().splitlines()
    assert proc.wait(timeout=120) == 130
    match = re.fullmatch(r"interrupted at step (\d+) of 60: checkpoint saved to (\S+); "
                         r"continue with: (python main\.py .*)", rest[-1])
    assert match, rest[-3:]
    step, checkpoint, command = int(match[1]), match[2], match[3]
    assert 2 <= step < 60 and load_train_state(checkpoint)["step"] == step
    assert not (out / "rd4ad" / "gravel" / "calibration.json").exists()  # training did not finish

    argv = shlex.split(command)
    assert argv[:2] == ["python", "main.py"] and argv[2:] == args + ["--resume"]
    done = subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming at step {step} of 60" in done.stderr
    assert load_train_state(checkpoint)["step"] == 60


def test_training_curves_go_to_a_csv_and_to_visualdl_when_installed(tmp_path, monkeypatch):
    import csv
    import types

    written = []

    class FakeLogWriter:  # the documented visualdl.LogWriter interface
        def __init__(self, logdir):
            written.append(("open", logdir))

        def add_scalar(self, tag, value, step):
            written.append((tag, step, value))

        def close(self):
            written.append(("close",))

    monkeypatch.setitem(sys.modules, "visualdl", types.SimpleNamespace(LogWriter=FakeLogWriter))
    trainer, net, batches, step = toy_run(tmp_path, 5)
    trainer.run(batches, step)
    with open(tmp_path / "train_log.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    # a 5-step run gets a row every step (at least ~100 points a run), not only every log_interval
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5]
    losses = load_train_state(tmp_path / CHECKPOINT_FILE)["losses"]
    # the logged loss is the running mean over the last log_interval steps
    assert float(rows[3]["loss"]) == pytest.approx(np.mean(losses[2:4]), rel=1e-6)
    assert float(rows[0]["lr"]) == pytest.approx(0.01)
    assert written[0] == ("open", str(tmp_path / "visualdl")) and written[-1] == ("close",)
    assert ("train/loss", 4, pytest.approx(float(rows[3]["loss"]))) in written


def test_the_curve_has_a_row_every_log_interval_and_at_an_interrupted_step(tmp_path, caplog):
    import csv

    trainer, net, batches, step = toy_run(tmp_path, 400, interrupt_at=5)  # 400 steps: rows every 2
    with caplog.at_level("INFO", logger="adkit"), pytest.raises(TrainingInterrupted):
        trainer.run(batches, step)
    with open(tmp_path / "train_log.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [2, 4, 5]  # 5: where Ctrl-C stopped it
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("toy step ")]
    assert [m.split()[2] for m in logged] == ["2/400", "4/400", "5/400"]


def test_plain_progress_speaks_after_5_s_then_every_30_s(monkeypatch, caplog):
    """Off a terminal a long phase logs its first line after 5 s (not 30: EfficientAD's
    calibration after the last step once stayed silent for 40 s), then every 30 s."""
    from adkit.core import progress

    now = [100.0]
    monkeypatch.setattr("time.monotonic", lambda: now[0])  # PlainProgress's clock
    with caplog.at_level("INFO", logger="adkit"):
        bar = progress.PlainProgress(None, 10, 0, "scoring training images", "images")
        for t in (103.0, 106.0, 120.0, 134.0, 137.0):
            now[0] = t
            bar.update(1)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("scoring")]
    # at 106 (2 done in 6 s: 8 more take 24 s) and 137 (2 done in the 17 s since 120, the
    # newest count 10 s old or more: 5 more take 42 s)
    assert lines == ["scoring training images: 2/10 images, about 24 s left",
                     "scoring training images: 5/10 images, about 42 s left"]


def test_the_time_left_follows_a_phase_that_speeds_up(monkeypatch, caplog):
    """A coreset's first choices are its slowest: here one a second for 60 s, then 200 a
    second, 87 s in all. The time left comes from the last 10 s, so the third line, in the fast
    part, says 44 s (22 s are left), where the average since the start said 5 min."""
    from adkit.core import progress

    now = [0.0]
    monkeypatch.setattr("time.monotonic", lambda: now[0])
    with caplog.at_level("INFO", logger="adkit"):
        bar = progress.PlainProgress(None, 5529, 0, "choosing the memory bank", "patches")
        for step in range(1, 5530):
            now[0] = float(step) if step <= 60 else 60.0 + (step - 60) / 200.0
            bar.update(1)
    # at 65 s: 1060 done, 1005 of them since 55 s: 4469 left take 44.5 s
    assert [r.getMessage() for r in caplog.records] == [
        "choosing the memory bank: 5/5529 patches, about 92 min left",
        "choosing the memory bank: 35/5529 patches, about 92 min left",
        "choosing the memory bank: 1060/5529 patches, about 44 s left"]


def test_the_rate_probe_skips_the_first_items_and_reports_once(monkeypatch):
    """The first batch builds kernels (slow); the rate is of the next ``measure`` items only."""
    from adkit.core.progress import RateProbe

    now = [0.0]
    probe = RateProbe(skip=2, measure=4)
    probe._clock = lambda: now[0]
    reports = []
    for t, n in ((50.0, 2), (52.0, 2), (54.0, 2), (56.0, 2), (70.0, 2)):  # 2 items per batch
        now[0] = t
        reports.append(probe.update(n))
    # timing starts at 50 s (after the first 2 items) and ends when 4 more are done: 54 s
    assert reports == [None, None, 1.0, None, None]


def test_a_long_training_says_how_long_it_will_take_after_its_first_steps(tmp_path, caplog, monkeypatch):
    import adkit.train.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "LONG_PHASE_SECONDS", 0.0)  # the toy's steps are fast
    trainer, net, batches, step = toy_run(tmp_path, 40)
    with caplog.at_level("INFO", logger="adkit"):
        trainer.run(batches, step)
    lines = [r.getMessage() for r in caplog.records if "steps left" in r.getMessage()]
    # once, after step 1 (not timed) and 3 timed steps: 36 of 40 left
    assert len(lines) == 1 and re.fullmatch(r"toy: about \d+ s for the 36 steps left \([\d.]+ s per step\)", lines[0])
