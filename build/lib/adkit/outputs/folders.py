"""What users keep from a run: overlays, maps and masks mirroring the input tree, and CSVs.

Shared by ``main.py --mode eval/infer`` (dygraph) and ``infer.py`` (Paddle Inference / ONNX), so
pictures and tables are the same whichever engine made the maps. A run writes into a fresh
hidden folder that replaces the previous run's folder only when it succeeds: old and new results
never mix, and a failed run leaves nothing behind.
"""
import io
import os
import shutil
import tempfile

import cv2
import numpy as np

from adkit.core.errors import UserError
from adkit.core.image_io import RUN_MARKER, map_at_size
from adkit.core.io_utils import (default_dir_mode, make_folders, remove_folders, write_bytes, write_csv,
                                 write_json)
from adkit.evaluate.regions import REGION_FIELDS, defect_regions
from adkit.outputs.visualize import annotated_overlay, encode_png

SAVE_FORMATS = ("png", "npy", "tiff")
SAVE_FORMAT_HELP = "png: overlays and masks only; npy / tiff: also the float32 map at the image size"
TEST_CSV_HEADER = ["path", "defect_type", "score", "prediction", "ground_truth", "status", "overlay"]
REGIONS_CSV_HEADER = ["path", "region", "x", "y", "width", "height", "area", "max", "mean"]
REGIONS_CSV = "regions.csv"  # next to df_test.csv
TRAINING_CSV_HEADER = ["path", "split", "defect_type", "score", "prediction", "ground_truth"]


def format_score(score):
    """Shortest text that reads back as the same float32: CSV labels can be re-derived exactly."""
    return np.format_float_positional(np.float32(score), unique=True, trim="-")


def label_of(score, threshold):
    if threshold is None:
        return ""
    return "defect" if score >= threshold else "good"


def display_range(map_range, threshold):
    """One colour scale for every image of a run, fixed before the first image (outputs stream):
    the typical good-pixel value is the bottom and the threshold sits in the middle, so red
    means "well above the threshold" in every picture. ``map_range``: (median, high percentile)
    of validation map pixels."""
    lo, high = (float(v) for v in map_range)
    if threshold is not None and threshold > lo:
        return lo, lo + 2.0 * (threshold - lo)
    return lo, max(high, lo + 1e-6)


class RunFolder:
    """A fresh output folder: files go to a hidden sibling that replaces ``path`` on success.

    ``path`` must be new, empty, or a folder an earlier run wrote (it holds ``run.json``):
    anything else is the user's, and is never replaced."""

    def __init__(self, path, option="--output_dir"):
        self.path = os.path.abspath(path)
        if os.path.isfile(self.path):
            raise UserError(f"{option} {path}: is a file, expected a folder")
        if os.path.isdir(self.path) and os.listdir(self.path) and not os.path.isfile(
                os.path.join(self.path, RUN_MARKER)):
            raise UserError(f"{option} {path}: folder exists and was not written by a run of this "
                            "toolkit; choose a new or empty folder (its files are left as they are)")
        self.staging = None
        self.info = {}  # recorded in run.json: what made the files (model, threshold, ...)
        self._created_parents = []

    def __enter__(self):
        self._created_parents = make_folders(os.path.dirname(self.path))
        self.staging = tempfile.mkdtemp(dir=os.path.dirname(self.path),
                                        prefix=f".{os.path.basename(self.path)}.tmp-")
        os.chmod(self.staging, default_dir_mode())  # mkdtemp gives 0700
        return self

    def file(self, relative):
        return os.path.join(self.staging, relative)

    def __exit__(self, kind, value, traceback):
        if kind is None:
            write_json(self.file(RUN_MARKER), {"written_by": "adkit", **self.info})
            old = None
            if os.path.exists(self.path):
                old = tempfile.mkdtemp(dir=os.path.dirname(self.path), prefix=".old-")
                os.replace(self.path, os.path.join(old, "run"))
            os.replace(self.staging, self.path)
            if old:
                shutil.rmtree(old, ignore_errors=True)
            return False
        shutil.rmtree(self.staging, ignore_errors=True)
        remove_folders(self._created_parents)
        return False


class ImageOutputs:
    """Writes, per image, ``<rel folder>/<name>_overlay.png`` (heat map, outline, colour bar,
    score), ``<name>_mask.png`` (pixels >= threshold, when there is one) and the map at the
    image's own size as ``<name>.npy`` / ``<name>.tiff``; collects the rows of df_test.csv."""

    def __init__(self, run_folder, threshold, value_range=None, save_format="npy", maps_folder=""):
        """``value_range``: the overlay colour scale; None = set it before the first ``add``.
        ``maps_folder``: where the maps go inside the run folder (eval: anomaly_maps/<cls>, the
        layout the official MVTec evaluation scripts read), mirroring the input tree there too."""
        if save_format not in SAVE_FORMATS:
            raise UserError(f"--save_format {save_format}: expected one of {', '.join(SAVE_FORMATS)}")
        self.run = run_folder
        self.threshold = threshold
        self.value_range = value_range
        self.save_format = save_format
        self.maps_folder = maps_folder
        self.rows = []
        self.region_rows = []
        self._used = set()
        self._reserved = {}

    def add(self, path, relative, image_rgb, model_map, score, defect_type="", ground_truth=""):
        """One image: ``model_map`` is the model-size map; it is resized (bilinear) to the image."""
        full_map = map_at_size(model_map, image_rgb.shape[:2])
        base = self._reserved.pop(relative, None)
        if base is None:
            base = self._unique_base(relative)
        label = label_of(float(score), self.threshold)
        overlay = annotated_overlay(image_rgb, full_map, self.value_range, self.threshold,
                                    float(score), label)
        write_bytes(self.run.file(base + "_overlay.png"), encode_png(overlay))
        if self.threshold is not None:
            mask = (full_map >= self.threshold).astype(np.uint8) * 255
            write_bytes(self.run.file(base + "_mask.png"), encode_png(mask))
            for k, region in enumerate(defect_regions(full_map, self.threshold), 1):
                self.region_rows.append([path, k] + [format_score(region[f]) if f in ("max", "mean")
                                                     else region[f] for f in REGION_FIELDS])
        map_base = self.run.file(os.path.join(self.maps_folder, base))
        if self.save_format == "npy":
            buf = io.BytesIO()
            np.save(buf, full_map)
            write_bytes(map_base + ".npy", buf.getvalue())
        elif self.save_format == "tiff":
            write_bytes(map_base + ".tiff", encode_tiff(full_map))
        self.rows.append([path, defect_type, format_score(score), label, ground_truth, "ok",
                          base + "_overlay.png"])
        return overlay

    def skip(self, path, reason, defect_type="", ground_truth=""):
        self.rows.append([path, defect_type, "", "", ground_truth, f"skipped: {reason}", ""])

    def write_csv(self, name="df_test.csv"):
        """df_test.csv, and regions.csv beside it (one row per defect region of each image;
        written when there is a threshold to cut the maps at)."""
        write_csv(self.run.file(name), TEST_CSV_HEADER, self.rows)
        if self.threshold is not None:
            write_csv(self.run.file(REGIONS_CSV), REGIONS_CSV_HEADER, self.region_rows)

    def reserve(self, relatives):
        """Fix the file names of these images (``relative`` as ``add`` gets it, in this order)
        before any is added, by ``add``'s rule (a.png and a.jpg in one folder: ``a``, ``a_1``):
        the names then depend on the list alone, not on which images end up added, so
        processes that each add their block of one list write the names one process does
        (an image skipped as unreadable keeps its name unused)."""
        for relative in relatives:
            self._reserved[relative] = self._unique_base(relative)

    def _unique_base(self, relative):
        folder, name = os.path.split(relative)
        stem = os.path.join(folder, os.path.splitext(name)[0])
        base, n = stem, 1
        while base in self._used:  # a.png and a.jpg in one folder
            base = f"{stem}_{n}"
            n += 1
        self._used.add(base)
        return base


def result_line(row):
    """The stdout line of one df_test.csv row: score, label and path, tab-separated (plus the
    reason when the image was skipped)."""
    path, _, score, label, _, status, _ = row
    return f"{score or '-'}\t{label or '-'}\t{path}" + ("" if status == "ok" else f"\t{status}")


def encode_tiff(amap):
    """Uncompressed float32 TIFF: what tifffile (the official MVTec scripts' reader) reads
    without extra codecs."""
    ok, buf = cv2.imencode(".tiff", np.asarray(amap, np.float32), [cv2.IMWRITE_TIFF_COMPRESSION, 1])
    if not ok:
        raise RuntimeError("TIFF encoding failed")
    return buf.tobytes()


def training_rows(calibration, threshold):
    """df_training.csv rows from the scores recorded at the end of training (calibration.json):
    training and validation good images (a tiled model's training photos without a score), and
    the synthetic defects made from validation images."""
    rows = []
    for split in ("train", "val"):
        for entry in calibration.get(split, []):
            scored = entry["score"] is not None  # a tiled model's training photos are not
            rows.append([entry["path"], split, "good", format_score(entry["score"]) if scored else "",
                         label_of(entry["score"], threshold) if scored else "", "good"])
    for entry in calibration.get("synthetic", []):
        rows.append([entry["path"], "synthetic", f"synthetic_{entry['kind']}",
                     format_score(entry["score"]), label_of(entry["score"], threshold), "defect"])
    return rows


def write_training_csv(run_folder, calibration, threshold):
    if calibration:
        write_csv(run_folder.file("df_training.csv"), TRAINING_CSV_HEADER,
                  training_rows(calibration, threshold))
