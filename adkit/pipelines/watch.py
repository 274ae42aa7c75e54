"""infer.py --watch DIR: score images as the camera software drops them into a folder.

A file is scored once it is complete: its size and modification time unchanged across two
polls (a file renamed in whole is seen complete on the poll after it appears); names starting
with "." and extensions that are not images (x.png.part, x.tmp) are never read. Each result is
appended to the results CSV, flushed and synced before the file is moved (--move_done); the
CSV is also the ledger: on a restart the files it lists (same path, size and modification time)
are not scored again, and a file listed but not yet moved is moved. So no image is scored
twice or skipped across a restart; a file replaced by another of the same name is a new part
and is scored.
"""
import csv
import os
import shutil
import signal
import time

from adkit.core.errors import UserError
from adkit.core.image_io import IMAGE_EXTENSIONS
from adkit.core.progress import log

RESULT_HEADER = ["time", "file", "size", "mtime_ns", "score", "label", "threshold", "error"]


class Ledger:
    """The results CSV: what was scored (by path relative to the folder, size, mtime)."""

    def __init__(self, path):
        self.path = path
        self.done = set()
        if os.path.isfile(path) and os.path.getsize(path):
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames != RESULT_HEADER:
                    raise UserError(f"--results {path}: its columns ({','.join(reader.fieldnames or [])}) are "
                                    f"not a watch results file's ({','.join(RESULT_HEADER)}); name another file")
                self.done = {(row["file"], row["size"], row["mtime_ns"]) for row in reader}
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        new = not os.path.isfile(path) or os.path.getsize(path) == 0
        self._file = open(path, "a", newline="", encoding="utf-8")  # appended to, never replaced
        self._writer = csv.writer(self._file)
        if new:
            self._write(RESULT_HEADER)

    def _write(self, row):
        self._writer.writerow(row)
        self._file.flush()
        os.fsync(self._file.fileno())  # on disk before the file is moved: a crash scores nothing twice

    def record(self, key, score, label, threshold, error=""):
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._write([stamp, *key, "" if score is None else repr(score), label,
                     "" if threshold is None else repr(threshold), error])
        self.done.add(key)

    def close(self):
        self._file.close()


def complete_files(folder, skip, last_seen):
    """{relative path: (size, mtime_ns)} of the images under ``folder`` (``skip``: a folder not
    to look into) unchanged since ``last_seen`` (the previous poll's sizes, updated here)."""
    seen, stable = {}, {}
    for where, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and os.path.join(where, d) != skip)
        for name in sorted(names):
            if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            path = os.path.join(where, name)
            try:
                info = os.stat(path)
            except OSError:  # moved or removed meanwhile
                continue
            relative = os.path.relpath(path, folder)
            seen[relative] = (info.st_size, info.st_mtime_ns)
            if info.st_size and last_seen.get(relative) == seen[relative]:
                stable[relative] = seen[relative]
    last_seen.clear()
    last_seen.update(seen)
    return stable


def watch(predictor, folder, results, move_done=None, poll_seconds=1.0, echo=print):
    """Score the folder's complete images until SIGTERM or Ctrl-C (the image being scored is
    finished and recorded first)."""
    if not os.path.isdir(folder):
        raise UserError(f"--watch {folder}: not a folder")
    folder = os.path.abspath(folder)
    skip = os.path.abspath(move_done) if move_done else None
    ledger = Ledger(results)
    stopping = []
    previous = {sig: signal.signal(sig, lambda *_: stopping.append(True)) for sig in (signal.SIGTERM, signal.SIGINT)}
    log.info("watching %s for images (every %.1f s); results appended to %s", folder, poll_seconds, results)
    last_seen = {}
    try:
        while not stopping:
            for relative, (size, mtime) in complete_files(folder, skip, last_seen).items():
                if stopping:
                    break
                key = (relative, str(size), str(mtime))
                if key not in ledger.done:
                    _score_one(predictor, os.path.join(folder, relative), key, ledger, echo)
                if skip:
                    _move(folder, relative, skip)
            time.sleep(poll_seconds)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        ledger.close()
    log.info("stopped watching %s", folder)


def _score_one(predictor, path, key, ledger, echo):
    threshold = predictor.threshold.value
    try:
        prediction = predictor.predict(path)
    except UserError as err:  # a file that is no image: recorded, not retried forever
        log.warning("%s", err)
        ledger.record(key, None, "", threshold, str(err))
        return
    ledger.record(key, prediction.score, prediction.label, threshold)
    echo(f"{prediction.score:.6g}\t{prediction.label or '-'}\t{key[0]}")


def _move(folder, relative, done_folder):
    target = os.path.join(done_folder, relative)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    try:
        shutil.move(os.path.join(folder, relative), target)
    except OSError as err:
        log.warning("--move_done: could not move %s (%s)", relative, err)
