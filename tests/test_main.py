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

from adkit.commands import main as cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "sample_data")
METRIC_KEYS = {"image_auroc", "pixel_auroc", "aupro", "f1_max", "f1_threshold", "per_type",
               "threshold", "decision"}


def run_cli(args):
    """main.main in this process; returns the exit code (0 when it returns normally)."""
    try:
        cli.main(args)
    except SystemExit as stop:
        return stop.code
    return 0


@pytest.mark.slow
@pytest.mark.parametrize("model, extra", [
    ("rd4ad", ["--backbone", "efficientnet_lite0", "--steps", "3", "--batch_size", "4"]),
    ("efficientad_s", ["--steps", "3", "--teacher_weights", "none"]),
    ("efficientad_m", ["--steps", "2", "--teacher_weights", "none"]),
    ("stfpm", ["--steps", "3", "--batch_size", "4"]),
    ("patchcore", ["--coreset_ratio", "0.1"]),
    ("padim", []),
])
def test_train_eval_infer_on_sample_data(tmp_path, model, extra):
    out = str(tmp_path / "out")
    common = ["--model", model, "--data_dir", SAMPLE, "--output_dir", out, "--image_size", "64"]
    assert run_cli(common + ["--mode", "train", "--cls", "all"] + extra) == 0
    for cls in ("brick", "gravel"):
        folder = os.path.join(out, model, cls)
        assert os.path.isfile(os.path.join(folder, "train_config.json"))
        calibration = json.load(open(os.path.join(folder, "calibration.json")))
        val_scores = [e["score"] for e in calibration["val"]]
        assert calibration["candidates"]["val_max"] == max(val_scores)
        # the default policy: F1-max over validation good images + their synthetic defects
        assert calibration["policy"] == "synthetic_f1" and calibration["synthetic"]
        assert {e["path"] for e in calibration["synthetic"]} == {e["path"] for e in calibration["val"]}

    assert run_cli(common + ["--mode", "eval", "--cls", "all"]) == 0
    summary = json.load(open(os.path.join(out, model, "metrics.json")))
    assert summary["model"] == model and set(summary["categories"]) == {"brick", "gravel"}
    assert json.load(open(os.path.join(out, "metrics.json"))) == {"models": {model: summary}}
    for cls, result in summary["categories"].items():
        assert METRIC_KEYS <= set(result)
        assert 0.0 <= result["image_auroc"] <= 1.0 and 0.0 <= result["aupro"] <= 1.0
    # brick's "misc" defects ship without masks: counted in image metrics, per type as well
    assert set(summary["categories"]["brick"]["per_type"]) == {"contamination", "misc", "scratch", "stain"}
    expected_mean = np.mean([r["image_auroc"] for r in summary["categories"].values()])
    assert summary["mean"]["image_auroc"] == pytest.approx(expected_mean)
    eval_dir = os.path.join(out, model, "brick", "eval")
    rows = list(csv.DictReader(open(os.path.join(eval_dir, "df_test.csv"))))
    n_test = sum(len(files) for _, _, files in os.walk(os.path.join(SAMPLE, "brick", "test")))
    assert len(rows) == n_test
    brick = summary["categories"]["brick"]
    threshold = brick["threshold"]["value"]
    assert threshold == calibration_threshold(out, model, "brick")  # training side, not test F1
    for row in rows:
        # scores are written as float32 text that reads back exactly
        assert row["prediction"] == ("defect" if np.float32(row["score"]) >= np.float32(threshold) else "good")
        assert row["ground_truth"] == ("good" if row["defect_type"] == "good" else "defect")
        rel = os.path.relpath(row["path"], os.path.join(SAMPLE, "brick"))
        assert row["overlay"] == rel.replace(".png", "_overlay.png")
        assert os.path.isfile(os.path.join(eval_dir, row["overlay"]))
        # maps in the official scripts' layout: anomaly_maps/<category>/<path in the category>
        assert os.path.isfile(os.path.join(eval_dir, "anomaly_maps", "brick", rel.replace(".png", ".npy")))
    # the decision table counts exactly what the CSV says
    confusion = brick["decision"]["overall"]["confusion"]
    pairs = [(r["ground_truth"], r["prediction"]) for r in rows]
    assert confusion == {"tn": pairs.count(("good", "good")), "fp": pairs.count(("good", "defect")),
                         "fn": pairs.count(("defect", "good")), "tp": pairs.count(("defect", "defect"))}
    training_rows = list(csv.DictReader(open(os.path.join(eval_dir, "df_training.csv"))))
    assert {r["split"] for r in training_rows} == {"train", "val", "synthetic"}
    assert os.path.getsize(os.path.join(eval_dir, "report.html")) > 10_000

    images = os.path.join(SAMPLE, "gravel", "test", "crack")
    assert run_cli(common + ["--mode", "infer", "--cls", "gravel", "--img_path", images]) == 0
    infer_dir = os.path.join(out, model, "gravel", "infer")
    names = sorted(os.listdir(images))
    for name in names:
        assert cv2.imread(os.path.join(infer_dir, name.replace(".png", "_overlay.png"))) is not None
    predictions = list(csv.DictReader(open(os.path.join(infer_dir, "df_test.csv"))))
    assert [os.path.basename(r["path"]) for r in predictions] == names
    assert {r["defect_type"] for r in predictions} == {"crack"}  # a folder beside test/good


def calibration_threshold(out, model, cls):
    return json.load(open(os.path.join(out, model, cls, "calibration.json")))["threshold"]["value"]


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


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_arguments_give_one_error_line(tmp_path, case):
    build, message = BAD_INPUTS[case]
    code, lines = cli_error(["--model", "rd4ad", "--mode", "train"] + build(tmp_path))
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    assert re.search(message, lines[0]), lines[0]


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_help_shows_each_default_once():
    done = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), "--help"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "(default: None)" not in text and text.count("(default: sample_data)") == 1
    assert "--threshold_policy" in text and "val_fpr:F" in text


@pytest.mark.slow
@pytest.mark.parametrize("args, says", [
    (["--threshold_policy", "val_fpr:2"], "--threshold_policy val_fpr:2: F is the fraction"),
    (["--val_ratio", "0", "--threshold_policy", "val_max"], "--threshold_policy val_max: needs validation"),
    (["--val_ratio", "0"], "--threshold_policy synthetic_f1: needs validation good images"),
    (["--save_format", "bmp"], "--save_format must be one of png, npy, tiff"),
    (["--cpu_conv", "mkl"], "--cpu_conv must be one of onednn, paddle, got 'mkl'"),
])
def test_threshold_policies_that_cannot_apply_stop_before_training(tmp_path, args, says):
    code, lines = cli_error(["--model", "rd4ad", "--mode", "train", "--data_dir", make_dataset(tmp_path),
                             "--output_dir", str(tmp_path / "out"), "--steps", "1"] + args)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], lines
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def gravel_run(tmp_path_factory):
    """A 2-step RD4AD on a copy of gravel (64 px): (data dir, output dir, common args)."""
    root = tmp_path_factory.mktemp("gravel_run")
    data, out = make_dataset(root / "data"), str(root / "out")
    common = ["--model", "rd4ad", "--data_dir", data, "--output_dir", out, "--cls", "gravel",
              "--image_size", "64", "--backbone", "efficientnet_lite0", "--backbone_weights", "none"]
    assert run_cli(common + ["--mode", "train", "--steps", "2", "--batch_size", "4"]) == 0
    return data, out, common


@pytest.mark.slow
def test_eval_applies_any_policy_without_retraining(gravel_run):
    data, out, common = gravel_run
    folder = os.path.join(out, "rd4ad", "gravel")
    calibration = json.load(open(os.path.join(folder, "calibration.json")))
    for policy, expected in (("val_max", max(e["score"] for e in calibration["val"])),
                             ("manual:0.5", 0.5), ("test_f1", None)):
        assert run_cli(common + ["--mode", "eval", "--threshold_policy", policy]) == 0
        result = json.load(open(os.path.join(folder, "eval_metrics.json")))
        threshold = result["threshold"]
        assert threshold["policy"] == policy
        if expected is None:  # the oracle is labelled as such and equals the F1-max threshold
            assert threshold["value"] == result["f1_threshold"] and "oracle" in threshold["source"]
        else:
            assert threshold["value"] == pytest.approx(expected)
        rows = list(csv.DictReader(open(os.path.join(folder, "eval", "df_test.csv"))))
        flagged = sum(r["prediction"] == "defect" for r in rows)
        overall = result["decision"]["overall"]
        assert overall["confusion"]["tp"] + overall["confusion"]["fp"] == flagged
    html = open(os.path.join(folder, "eval", "report.html"), encoding="utf-8").read()
    assert "test_f1" in html and "oracle" in html


@pytest.mark.slow
def test_eval_names_every_bad_test_file_before_running_or_skips_them(gravel_run, tmp_path):
    data, out, common = gravel_run
    crack = os.path.join(data, "gravel", "test", "crack")
    saved = {name: open(os.path.join(crack, name), "rb").read() for name in sorted(os.listdir(crack))[:2]}
    try:
        for name, content in saved.items():
            open(os.path.join(crack, name), "wb").write(content[:300])
        code, lines = cli_error(common + ["--mode", "eval"])
        errors = [line for line in lines if line.startswith("error: ")]
        assert code == 2 and errors == lines[-1:], lines  # (the other line: random-weights warning)
        assert errors[0].startswith("error: 2 bad files: ") and all(n in errors[0] for n in saved)
        assert run_cli(common + ["--mode", "eval", "--skip_bad_images"]) == 0
        rows = list(csv.DictReader(open(os.path.join(out, "rd4ad", "gravel", "eval", "df_test.csv"))))
        skipped = [os.path.basename(r["path"]) for r in rows if r["status"] != "ok"]
        assert skipped == list(saved)
        result = json.load(open(os.path.join(out, "rd4ad", "gravel", "eval_metrics.json")))
        assert result["decision"]["overall"]["count"] == len(rows) - 2 and len(result["skipped"]) == 2
    finally:
        for name, content in saved.items():
            open(os.path.join(crack, name), "wb").write(content)


def camera_folder_with_two_bad_files(folder):
    """JPEGs of gravel's test images, one cut short (cam_003_trunc.jpg) and one that is not an
    image at all (cam_099.jpg)."""
    os.makedirs(folder)
    sources = sorted(os.listdir(os.path.join(SAMPLE, "gravel", "test", "good")))
    for k, name in enumerate(sources[:3]):
        image = cv2.imread(os.path.join(SAMPLE, "gravel", "test", "good", name))
        cv2.imwrite(os.path.join(folder, f"cam_00{k}.jpg"), image)
    whole = open(os.path.join(folder, "cam_000.jpg"), "rb").read()
    open(os.path.join(folder, "cam_003_trunc.jpg"), "wb").write(whole[:len(whole) // 2])
    open(os.path.join(folder, "cam_099.jpg"), "w").write("<html>a saved web page, not a photo</html>")
    return folder


@pytest.mark.slow
def test_infer_names_every_bad_file_before_scoring(gravel_run, tmp_path):
    data, out, common = gravel_run
    folder = camera_folder_with_two_bad_files(str(tmp_path / "camera"))
    expected = [f"error: 2 bad files: {folder}/cam_003_trunc.jpg: cannot decode image (truncated JPEG: "
                f"the file ends before its end-of-image marker); {folder}/cam_099.jpg: cannot decode "
                "image (expected PNG/JPEG/BMP/TIFF/WebP)"]
    code, lines = cli_error(common + ["--mode", "infer", "--img_path", folder])
    assert code == 2 and lines == expected, lines  # before the model loads: no other line
    assert not os.path.exists(os.path.join(out, "rd4ad", "gravel", "infer"))
    done = subprocess.run([sys.executable, os.path.join(ROOT, "infer.py"), "--model_dir",
                           os.path.join(out, "rd4ad", "gravel"), "--img_path", folder, "--output_dir",
                           str(tmp_path / "infer_out")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 2 and done.stderr.splitlines() == expected, done.stderr
    assert not (tmp_path / "infer_out").exists()
    # asked to skip them: the good ones are scored, the two listed as skipped
    assert run_cli(common + ["--mode", "infer", "--img_path", folder, "--skip_bad_images"]) == 0
    rows = list(csv.DictReader(open(os.path.join(out, "rd4ad", "gravel", "infer", "df_test.csv"))))
    assert [(os.path.basename(r["path"]), r["status"] == "ok") for r in rows] == [
        ("cam_000.jpg", True), ("cam_001.jpg", True), ("cam_002.jpg", True),
        ("cam_003_trunc.jpg", False), ("cam_099.jpg", False)]


def test_a_training_run_that_fails_before_its_first_checkpoint_leaves_no_folder(tmp_path):
    out = tmp_path / "out"
    code, lines = cli_error(["--model", "efficientad_s", "--mode", "train", "--data_dir", make_dataset(tmp_path),
                             "--output_dir", str(out), "--steps", "1", "--image_size", "64",
                             "--teacher_weights", str(tmp_path / "missing_teacher.pth")])
    assert code == 2 and lines[-1].startswith("error: ") and "missing_teacher.pth" in lines[-1]
    assert not out.exists()


@pytest.mark.slow
def test_bad_test_data_is_reported_before_any_forward_pass(gravel_run, monkeypatch):
    from adkit.deploy.engines import DygraphEngine, PaddleEngine

    data, out, common = gravel_run
    good = os.path.join(data, "gravel", "test", "good")
    bad = os.path.join(good, "zz_truncated.png")
    with open(os.path.join(good, "000.png"), "rb") as f:
        head = f.read()[:200]
    forward_calls = []
    for engine in (DygraphEngine, PaddleEngine):  # on the CPU eval scores through the graph
        monkeypatch.setattr(engine, "run", lambda self, batch: forward_calls.append(1))
    try:
        with open(bad, "wb") as f:
            f.write(head)
        assert run_cli(common + ["--mode", "eval"]) == 2
    finally:
        os.remove(bad)
    assert forward_calls == []


PHASES = {  # what each phase of a run says it does, and what it counts
    "efficientad_s": (["--steps", "2", "--teacher_weights", "none"], [
        ("normalising the teacher on the training images", "images"), ("training efficientad_s", "steps"),
        ("normalising the maps on the validation images", "images"),
        ("scoring training images", "images"), ("scoring synthetic defects", "images")]),
    "patchcore": ([], [
        ("extracting features of the training images", "images"), ("choosing the memory bank", "patches"),
        ("scoring validation images", "images"),
        # eval
        ("scoring test images", "images"), ("writing overlays and maps", "images")]),
}


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(PHASES))
def test_every_long_phase_says_what_it_does_and_the_time_left(tmp_path, monkeypatch, capsys, model):
    from adkit.core import progress

    monkeypatch.setattr(progress, "PLAIN_PROGRESS_SECONDS", 0.0)  # a line at every update
    options, phases = PHASES[model]
    common = ["--model", model, "--data_dir", make_dataset(tmp_path), "--cls", "gravel",
              "--output_dir", str(tmp_path / "out"), "--image_size", "64", *options]
    assert run_cli(common + ["--mode", "train"]) == 0
    if model == "patchcore":
        assert run_cli([o for o in common if o not in options] + ["--mode", "eval"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err  # plain lines, no carriage-return bars, when stderr is not a terminal
    for phase, unit in phases:
        assert re.search(rf"INFO {re.escape(phase)}: \d+/\d+ {unit}, about \d+ (s|min) left", err), phase


@pytest.mark.slow
def test_the_few_validation_images_warning_is_said_once_per_model(tmp_path, capsys):
    """Four training images: two held out, a threshold that is a guess. Training warns; eval
    leaves it to report.html instead of saying it a second time."""
    data = tmp_path / "data"
    shutil.copytree(os.path.join(SAMPLE, "brick"), data / "brick")
    good = data / "brick" / "train" / "good"
    for name in sorted(os.listdir(good))[4:]:
        os.remove(good / name)
    common = ["--model", "padim", "--data_dir", str(data), "--cls", "brick",
              "--output_dir", str(tmp_path / "out"), "--image_size", "64"]
    warning = "rests on 2 validation good images"
    assert run_cli(common + ["--mode", "train"]) == 0
    assert capsys.readouterr().err.count(warning) == 1
    assert run_cli(common + ["--mode", "eval"]) == 0
    assert warning not in capsys.readouterr().err
    report = open(tmp_path / "out" / "padim" / "brick" / "eval" / "report.html", encoding="utf-8").read()
    assert report.count(warning) == 1
    # trained with a manual threshold (no warning then), evaluated with one from those 2 images
    assert run_cli(common + ["--mode", "train", "--threshold_policy", "manual:1"]) == 0
    assert warning not in capsys.readouterr().err
    assert run_cli(common + ["--mode", "eval", "--threshold_policy", "val_max"]) == 0
    assert capsys.readouterr().err.count(warning) == 1
