"""infer.py --watch as a real process: a file copied in slowly is scored once, complete; a file
renamed in is scored; --move_done moves them; after a restart nothing is scored twice and new
files are scored."""
import csv
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from test_serving import DEFECTS, GOOD, ROOT, exports  # noqa: F401 (exports: a fixture)


class Watcher:
    def __init__(self, model_dir, folder, results, *options):
        self.log = open(str(results) + f".{time.time_ns()}.log", "w+")
        self.proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "infer.py"), "--model_dir", str(model_dir),
                                      "--watch", str(folder), "--results", str(results), "--poll_seconds", "0.3",
                                      "--cpu_threads", "1", *map(str, options)],
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=self.log, text=True)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=60)
        self.log.seek(0)
        return self.proc.returncode, out, self.log.read()


def rows(results):
    if not os.path.isfile(results):
        return []
    with open(results, newline="") as f:
        return list(csv.DictReader(f))


def wait_rows(results, count, watcher, timeout=90):
    deadline = time.time() + timeout
    while len(rows(results)) < count:
        assert watcher.proc.poll() is None and time.time() < deadline, watcher.stop()
        time.sleep(0.2)
    return rows(results)


def slow_copy(source, target, chunk=3000, pause=0.08):
    """As a camera's slow network write: the file grows a chunk at a time for a second or two."""
    data = open(source, "rb").read()
    with open(target, "wb") as f:
        for start in range(0, len(data), chunk):
            f.write(data[start:start + chunk])
            f.flush()
            time.sleep(pause)


@pytest.mark.slow
def test_watch_scores_complete_files_once_and_survives_a_restart(exports, tmp_path):
    from adkit import Predictor

    camera, done, results = tmp_path / "camera", tmp_path / "done", tmp_path / "results.csv"
    camera.mkdir()
    predictor = Predictor(str(exports[0]), cpu_threads=1)
    watcher = Watcher(exports[0], camera, results, "--move_done", done)
    try:
        time.sleep(1)
        slow_copy(DEFECTS[0], camera / "part_1.png")  # several polls while it grows
        staged = camera / ".part_2.png.tmp"  # written under a hidden name, then renamed in
        shutil.copy(GOOD, staged)
        os.rename(staged, camera / "part_2.png")
        (camera / "notes.txt").write_text("not an image")
        scored = wait_rows(results, 2, watcher)
    finally:
        code, out, err = watcher.stop()
    assert code == 0, err
    assert [r["file"] for r in scored] == ["part_1.png", "part_2.png"] and all(r["error"] == "" for r in scored)
    for row, source in zip(scored, (DEFECTS[0], GOOD)):  # the complete file's score, not a partial one's
        assert float(row["score"]) == pytest.approx(predictor.predict(source).score, rel=1e-5)
        assert row["label"] == predictor.predict(source).label
        assert int(row["size"]) == os.path.getsize(source)
    assert sorted(os.listdir(done)) == ["part_1.png", "part_2.png"] and os.listdir(camera) == ["notes.txt"]
    assert [line.split("\t")[2] for line in out.splitlines()] == ["part_1.png", "part_2.png"]
    assert "Traceback" not in err

    # without --move_done the files stay: a restart must neither score them again nor skip new ones
    line = tmp_path / "line"
    line.mkdir()
    ledger = tmp_path / "line.csv"
    shutil.copy(DEFECTS[1], line / "a.png")
    watcher = Watcher(exports[0], line, ledger)
    try:
        wait_rows(ledger, 1, watcher)
    finally:
        assert watcher.stop()[0] == 0
    shutil.copy(DEFECTS[2], line / "b.png")  # dropped while nothing watched
    watcher = Watcher(exports[0], line, ledger)
    try:
        wait_rows(ledger, 2, watcher)
        shutil.copy(GOOD, line / "c.png")
        wait_rows(ledger, 3, watcher)
        time.sleep(1.5)  # a few more polls: nothing is scored again
    finally:
        assert watcher.stop()[0] == 0
    assert [r["file"] for r in rows(ledger)] == ["a.png", "b.png", "c.png"]


@pytest.mark.slow
def test_watch_of_a_missing_folder_is_one_line(exports, tmp_path):
    done = subprocess.run([sys.executable, os.path.join(ROOT, "infer.py"), "--model_dir", str(exports[0]),
                           "--watch", str(tmp_path / "none")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        f"error: --watch {tmp_path / 'none'}: not a folder (expected the folder the camera writes to)"]
