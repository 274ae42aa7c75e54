"""--audit_log: one CSV row per decision, appended and flushed as it is made, so every verdict
the line acted on can be traced to the image it was about and the model and threshold that
gave it."""
import csv
import os
import threading
import time

from adkit.core.errors import UserError

AUDIT_HEADER = ["time", "request_id", "file_name", "part_id", "score", "label", "threshold", "model_name",
                "model", "model_version"]


def check_audit_file(path):
    """An existing log is appended to only when its columns are this version's: rows of two
    layouts in one file would be read under the wrong names. serve.py checks before the
    model loads."""
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return
    with open(path, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), [])
    if header != AUDIT_HEADER:
        raise UserError(f"--audit_log {path}: its columns ({','.join(header)}) are not this version's "
                        f"({','.join(AUDIT_HEADER)}); name a new file (the old one is left as it is)")


class AuditLog:
    def __init__(self, path):
        self.path = path
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        check_audit_file(path)
        new = not os.path.isfile(path) or os.path.getsize(path) == 0
        self._file = open(path, "a", newline="", encoding="utf-8")  # append: earlier rows stay
        self._writer = csv.writer(self._file)
        self._lock = threading.Lock()
        if new:
            self._write(AUDIT_HEADER)

    def record(self, request_id, file_name, part_id, score, label, threshold, model_name, model, model_version):
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
        self._write([stamp, request_id, file_name, part_id, repr(float(score)), label,
                     "" if threshold is None else repr(float(threshold)), model_name, model, model_version])

    def _write(self, row):
        with self._lock:
            self._writer.writerow(row)
            self._file.flush()
            os.fsync(self._file.fileno())  # a crash or power cut after the answer keeps the row

    def close(self):
        with self._lock:
            self._file.close()
