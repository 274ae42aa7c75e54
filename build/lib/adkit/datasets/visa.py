"""VisA, read in place from its official split file <data_dir>/split_csv/1cls.csv (columns
object, split, label, image, mask; paths relative to <data_dir>; masks nonzero = defect)."""
import csv
import functools
import os

from adkit.core.errors import UserError

from .common import Category, TestItem

SPLIT_FILE = os.path.join("split_csv", "1cls.csv")
COLUMNS = ("object", "split", "label", "image", "mask")


@functools.lru_cache(maxsize=4)
def read_split(data_dir):
    """The rows of 1cls.csv as dicts (read once per folder)."""
    path = os.path.join(data_dir, SPLIT_FILE)
    if not os.path.isfile(path):
        raise UserError(f"--data_dir {data_dir}: {SPLIT_FILE} not found (--data_format visa "
                        "reads VisA's official split file)")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{path}: missing column(s) {', '.join(missing)} "
                            f"(expected {', '.join(COLUMNS)})")
        rows = list(reader)
    for n, row in enumerate(rows, start=2):
        if row["split"] not in ("train", "test") or row["label"] not in ("normal", "anomaly"):
            raise UserError(f"{path}: line {n}: split must be train/test and label normal/anomaly, "
                            f"got {row['split']!r}, {row['label']!r}")
    return tuple(rows)


def find_categories(data_dir):
    return sorted({row["object"] for row in read_split(data_dir)})


class VisaCategory(Category):
    def __init__(self, data_dir, cls):
        self.data_dir, self.name = data_dir, cls
        self.root = os.path.join(data_dir, cls)
        self.rows = [row for row in read_split(data_dir) if row["object"] == cls]
        if not self.rows:
            raise UserError(f"--cls {cls}: no such object in {os.path.join(data_dir, SPLIT_FILE)} "
                            f"(found: {', '.join(find_categories(data_dir))})")

    def _path(self, relative):
        return os.path.join(self.data_dir, relative)

    def train_paths(self):
        # 1cls.csv trains on normal images only; any anomaly listed there is left out
        paths = [self._path(r["image"]) for r in self.rows if r["split"] == "train" and r["label"] == "normal"]
        if not paths:
            raise UserError(f"{self._path(SPLIT_FILE)}: no normal training images for {self.name}")
        return sorted(paths)

    def test_items(self):
        items = [TestItem(self._path(r["image"]), "good" if r["label"] == "normal" else "anomaly",
                          self._path(r["mask"]) if r["label"] == "anomaly" and r["mask"] else None)
                 for r in self.rows if r["split"] == "test"]
        if not items:
            raise UserError(f"{self._path(SPLIT_FILE)}: no test images for {self.name}")
        return sorted(items, key=lambda item: (item.defect_type != "good", item.path))
