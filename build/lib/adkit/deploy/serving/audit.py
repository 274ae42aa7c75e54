"""--audit_log: one CSV row per decision, appended and flushed as it is made, so every verdict
the line acted on can be traced to the model and threshold that gave it."""
import csv
import os
import threading
import time

AUDIT_HEADER = ["time", "request_id", "part_id", "score", "label", "threshold", "model",
                "model_version"]


class AuditLog:
    def __init__(self, path):
        self.path = path
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        new = not os.path.isfile(path) or os.path.getsize(path) == 0
        self._file = open(path, "a", newline="", encoding="utf-8")  # append: earlier rows stay
        self._writer = csv.writer(self._file)
        self._lock = threading.Lock()
        if new:
            self._write(AUDIT_HEADER)

    def record(self, request_id, part_id, score, label, threshold, model, model_version):
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
        self._write([stamp, request_id, part_id, repr(float(score)), label,
                     "" if threshold is None else repr(float(threshold)), model, model_version])

    def _write(self, row):
        with self._lock:
            self._writer.writerow(row)
            self._file.flush()
            os.fsync(self._file.fileno())  # a crash or power cut after the answer keeps the row

    def close(self):
        with self._lock:
            self._file.close()
