"""Training curves: a plain CSV always (``train_log.csv``), and VisualDL scalars when
``visualdl`` is installed (optional; PaddlePaddle's TensorBoard: ``visualdl --logdir DIR``)."""
import csv
import os

from adkit.core.progress import log

CSV_FILE = "train_log.csv"


class ScalarLog:
    def __init__(self, folder, keys):
        """``keys``: the scalar names, fixed for the run (the CSV's columns after ``step``)."""
        os.makedirs(folder, exist_ok=True)
        self.keys = list(keys)
        self.path = os.path.join(folder, CSV_FILE)
        fresh = not os.path.isfile(self.path)
        self._file = open(self.path, "a", newline="", encoding="utf-8")  # resume appends
        self._csv = csv.writer(self._file)
        if fresh:
            self._csv.writerow(["step"] + self.keys)
        self._writer = None
        try:
            from visualdl import LogWriter
        except ImportError:
            return
        self._writer = LogWriter(logdir=os.path.join(folder, "visualdl"))
        log.info("VisualDL scalars in %s (visualdl --logdir %s)", os.path.join(folder, "visualdl"), folder)

    def add(self, step, values):
        self._csv.writerow([step] + [values.get(key, "") for key in self.keys])
        self._file.flush()  # a crash keeps every row written so far
        if self._writer is not None:
            for key, value in values.items():
                self._writer.add_scalar(tag=f"train/{key}", value=float(value), step=step)

    def close(self):
        self._file.close()
        if self._writer is not None:
            self._writer.close()
