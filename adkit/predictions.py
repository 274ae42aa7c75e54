"""Turning model outputs into what users keep: scores, thresholds, overlays, maps and CSVs.

Shared by ``main.py --mode eval/infer`` (dygraph) and ``infer.py`` (Paddle Inference), so the
pictures and CSVs are identical whichever engine produced the maps.
"""
import os
import time

import cv2
import numpy as np

from datasets import read_rgb

from .io_utils import read_json, write_bytes, write_csv
from .visualize import encode_png, overlay

VAL_SCORES_FILE = "val_scores.json"
EVAL_METRICS_FILE = "eval_metrics.json"


def resolve_threshold(explicit, ckpt_dir):
    """--threshold, else eval's F1-max threshold, else the highest validation score, else None."""
    if explicit is not None:
        return float(explicit), "--threshold"
    for name, key, source in ((EVAL_METRICS_FILE, "threshold", "eval F1-max"),
                              (VAL_SCORES_FILE, "threshold", "max validation score")):
        path = os.path.join(ckpt_dir, name)
        if os.path.isfile(path):
            value = read_json(path).get(key)
            if value is not None:
                return float(value), source
    return None, "none"


def format_score(score):
    """Shortest text that reads back as the same float32: CSV labels can be re-derived exactly."""
    return np.format_float_positional(np.float32(score), unique=True, trim="-")


def label_of(score, threshold):
    if threshold is None:
        return ""
    return "defect" if score >= threshold else "good"


def display_range(maps, threshold):
    """One colour scale for a whole run; the threshold sits inside it so outlines mean something."""
    lo = float(np.min(maps))
    hi = float(np.max(maps))
    if threshold is not None:
        hi = max(hi, threshold * 1.5 if threshold > 0 else threshold)
    return lo, hi


def write_image_outputs(out_dir, paths, maps, scores, threshold, save_format="png"):
    """Per image: <stem>_overlay.png and, when asked, <stem>_map.npy / .tiff (map at the
    original image size); plus predictions.csv. Returns (CSV rows, seconds spent per image)."""
    os.makedirs(out_dir, exist_ok=True)
    value_range = display_range(maps, threshold)
    rows, seconds = [], []
    used_stems = set()
    for path, amap, score in zip(paths, maps, scores):
        start = time.perf_counter()
        image = read_rgb(path)
        h, w = image.shape[:2]
        full_map = cv2.resize(amap.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        stem = _unique_stem(path, used_stems)
        write_bytes(os.path.join(out_dir, f"{stem}_overlay.png"),
                    encode_png(overlay(image, full_map, value_range, threshold)))
        if save_format in ("npy", "tiff"):
            _write_map(os.path.join(out_dir, f"{stem}_map.npy"), full_map)
        if save_format == "tiff":
            _write_tiff(os.path.join(out_dir, f"{stem}_map.tiff"), full_map)
        rows.append([path, format_score(score), label_of(float(score), threshold)])
        seconds.append(time.perf_counter() - start)
    write_csv(os.path.join(out_dir, "predictions.csv"), ["path", "score", "label"], rows)
    return rows, seconds


def _unique_stem(path, used):
    # MVTec names repeat across defect folders (000.png in each): prefix the parent folder.
    parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
    stem = os.path.splitext(os.path.basename(path))[0]
    candidate = stem if stem not in used else f"{parent}_{stem}"
    n = 1
    while candidate in used:
        candidate = f"{parent}_{stem}_{n}"
        n += 1
    used.add(candidate)
    return candidate


def _write_map(path, amap):
    import io

    buf = io.BytesIO()
    np.save(buf, amap)
    write_bytes(path, buf.getvalue())


def _write_tiff(path, amap):
    ok, buf = cv2.imencode(".tiff", amap.astype(np.float32))
    if not ok:
        raise RuntimeError(f"{path}: TIFF encoding failed")
    write_bytes(path, buf.tobytes())
