"""main.py end to end on the shipped sample_data, and its one-line errors on bad input."""
import csv
import json
import os
import re
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

import main as cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "sample_data")
METRIC_KEYS = {"image_auroc", "pixel_auroc", "aupro", "f1_max", "threshold", "per_type"}


def run_cli(args):
    """main.main in this process; returns the exit code (0 when it returns normally)."""
    try:
        cli.main(args)
    except SystemExit as stop:
        return stop.code
    return 0


@pytest.mark.parametrize("model, extra", [
    ("rd4ad", ["--backbone", "efficientnet_lite0", "--steps", "3", "--batch_size", "4"]),
    ("efficientad_s", ["--steps", "3", "--teacher_weights", "none"]),
    ("efficientad_m", ["--steps", "2", "--teacher_weights", "none"]),
])
def test_train_eval_infer_on_sample_data(tmp_path, model, extra):
    out = str(tmp_path / "out")
    common = ["--model", model, "--data_dir", SAMPLE, "--output_dir", out, "--image_size", "64"]
    assert run_cli(common + ["--mode", "train", "--cls", "all"] + extra) == 0
    for cls in ("brick", "gravel"):
        folder = os.path.join(out, model, cls)
        assert os.path.isfile(os.path.join(folder, "train_config.json"))
        val = json.load(open(os.path.join(folder, "val_scores.json")))
        assert val["threshold"] == max(val["scores"])

    assert run_cli(common + ["--mode", "eval", "--cls", "all"]) == 0
    summary = json.load(open(os.path.join(out, "metrics.json")))
    assert summary["model"] == model and set(summary["categories"]) == {"brick", "gravel"}
    for cls, result in summary["categories"].items():
        assert METRIC_KEYS <= set(result)
        assert 0.0 <= result["image_auroc"] <= 1.0 and 0.0 <= result["aupro"] <= 1.0
    # brick's "misc" defects ship without masks: counted in image metrics, per type as well
    assert set(summary["categories"]["brick"]["per_type"]) == {"contamination", "misc", "scratch", "stain"}
    expected_mean = np.mean([r["image_auroc"] for r in summary["categories"].values()])
    assert summary["mean"]["image_auroc"] == pytest.approx(expected_mean)
    rows = list(csv.DictReader(open(os.path.join(out, model, "brick", "eval_predictions.csv"))))
    n_test = sum(len(files) for _, _, files in os.walk(os.path.join(SAMPLE, "brick", "test")))
    assert len(rows) == n_test
    threshold = summary["categories"]["brick"]["threshold"]
    for row in rows:
        # scores are written as float32 text that reads back exactly
        assert row["predicted"] == ("defect" if np.float32(row["score"]) >= np.float32(threshold) else "good")

    images = os.path.join(SAMPLE, "gravel", "test", "crack")
    assert run_cli(common + ["--mode", "infer", "--cls", "gravel", "--img_path", images]) == 0
    infer_dir = os.path.join(out, model, "gravel", "infer")
    names = sorted(os.listdir(images))
    for name in names:
        overlay = cv2.imread(os.path.join(infer_dir, name.replace(".png", "_overlay.png")))
        assert overlay is not None and overlay.shape[:2] == cv2.imread(os.path.join(images, name)).shape[:2]
    predictions = list(csv.DictReader(open(os.path.join(infer_dir, "predictions.csv"))))
    assert [os.path.basename(r["path"]) for r in predictions] == names


def make_dataset(root):
    shutil.copytree(os.path.join(SAMPLE, "gravel"), os.path.join(root, "gravel"))
    return str(root)


def cli_error(args):
    """Run the real command in a subprocess; (exit code, stderr lines)."""
    done = subprocess.run([sys.executable, os.path.join(ROOT, "main.py")] + args,
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    return done.returncode, [line for line in done.stderr.splitlines() if line.strip()]


BAD_INPUTS = {
    "missing data folder": (lambda d: ["--data_dir", str(d / "nope")], "--data_dir .*nope: folder not found"),
    "unknown category": (lambda d: ["--data_dir", make_dataset(d), "--cls", "bolt"], "--cls bolt: no such category"),
    "unknown option value": (lambda d: ["--data_dir", make_dataset(d), "--device", "tpu"], "--device must be cpu or gpu"),
    "bad number": (lambda d: ["--data_dir", make_dataset(d), "--steps", "many"], "argument --steps: invalid int value"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_arguments_give_one_error_line(tmp_path, case):
    build, message = BAD_INPUTS[case]
    code, lines = cli_error(["--model", "rd4ad", "--mode", "train"] + build(tmp_path))
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    assert re.search(message, lines[0]), lines[0]


def test_bad_files_stop_with_a_clear_error_and_no_traceback(tmp_path):
    base = ["--model", "efficientad_s", "--steps", "1", "--image_size", "64", "--teacher_weights",
            "none", "--output_dir", str(tmp_path / "out")]
    data = make_dataset(tmp_path / "data")
    good = os.path.join(data, "gravel", "train", "good")

    with open(os.path.join(good, "zz_broken.png"), "wb") as f:
        f.write(b"\x89PNG not really")
    code, lines = cli_error(base + ["--mode", "train", "--data_dir", data, "--cls", "gravel"])
    assert code == 2 and not any("Traceback" in l for l in lines)
    assert lines[-1].startswith("error: ") and "zz_broken.png: cannot decode" in lines[-1]

    for name in os.listdir(good):
        os.remove(os.path.join(good, name))
    code, lines = cli_error(base + ["--mode", "train", "--data_dir", data, "--cls", "gravel"])
    assert code == 2 and lines == [f"error: {good}: no images found (expected .png/.jpg/... files)"]


def test_mask_size_mismatch_is_reported_at_eval(tmp_path):
    data = make_dataset(tmp_path / "data")
    out = str(tmp_path / "out")
    base = ["--model", "efficientad_s", "--image_size", "64", "--teacher_weights", "none",
            "--output_dir", out, "--data_dir", data, "--cls", "gravel"]
    assert run_cli(base + ["--mode", "train", "--steps", "1"]) == 0
    mask_dir = os.path.join(data, "gravel", "ground_truth", "crack")
    first_mask = os.path.join(mask_dir, sorted(os.listdir(mask_dir))[0])
    cv2.imwrite(first_mask, np.zeros((10, 12), np.uint8))
    code, lines = cli_error(base + ["--mode", "eval"])
    assert code == 2 and lines[-1].startswith("error: ") and "mask is 12x10 but its image is 256x256" in lines[-1]
    assert not any("Traceback" in l for l in lines)
