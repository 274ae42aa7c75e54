"""main.py --mode update on tiny PatchCore and PaDiM models of sample_data: reviewed false alarms
(brightened good parts) are learnt without a refit, the threshold is re-calibrated, the version
number goes up; an update that would confirm fewer reviewed defects is refused and writes
nothing; bad input is one line."""
import csv
import glob
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "sample_data", "brick")
DEFECTS = sorted(p for p in glob.glob(os.path.join(SAMPLE, "test", "*", "*.png")) if "/good/" not in p)


def main_py(*argv):
    return subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *map(str, argv)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def train_tiny(model, out, *options):
    """The checkpoint folder of ``model`` trained at 64 px on sample_data's bricks."""
    done = main_py("--model", model, "--mode", "train", "--data_dir", os.path.join(ROOT, "sample_data"),
                   "--cls", "brick", "--image_size", 64, "--output_dir", out, *options)
    assert done.returncode == 0, done.stderr
    return out / model / "brick"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    out = tmp_path_factory.mktemp("update")
    for model in ("patchcore", "padim"):
        train_tiny(model, out / "out")
    return out


def brightened_goods(folder):
    """Good parts of a new, acceptable appearance: 11 good images (5 of test, 6 of train), brighter."""
    folder.mkdir(exist_ok=True)
    paths = []
    sources = (sorted(glob.glob(os.path.join(SAMPLE, "test", "good", "*.png")))
               + sorted(glob.glob(os.path.join(SAMPLE, "train", "good", "*.png")))[:6])
    for k, source in enumerate(sources):
        path = folder / f"bright_{k}.png"
        cv2.imwrite(str(path), cv2.convertScaleAbs(cv2.imread(source), alpha=1.0, beta=60))
        paths.append(str(path))
    return paths


def write_reviews(path, rows):
    from adkit.deploy.serving.reviews import COLUMNS

    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        for k, (request_id, verdict, image) in enumerate(rows):
            writer.writerow({"id": k + 1, "model_name": "brick", "request_id": request_id, "verdict": verdict,
                             "image": image})


@pytest.mark.slow
@pytest.mark.parametrize("model", ["patchcore", "padim"])
def test_an_update_learns_reviewed_false_alarms_and_bumps_the_version(checkpoints, model, tmp_path):
    from adkit import Predictor

    old_dir = checkpoints / "out" / model / "brick"
    goods = brightened_goods(tmp_path / "kept")
    reviews = tmp_path / "reviews.csv"
    write_reviews(reviews, [(f"g{k}", "false_alarm", p) for k, p in enumerate(goods)]
                  + [(f"d{k}", "defect_confirmed", p) for k, p in enumerate(DEFECTS)])
    new_dir = tmp_path / "v2"
    done = main_py("--mode", "update", "--model_dir", old_dir, "--reviews", reviews, "--output_dir", new_dir,
                   "--folds", 2)
    assert done.returncode == 0, done.stderr
    assert "flagged before" in done.stdout and f"wrote version 2 to {new_dir}" in done.stdout
    assert "Traceback" not in done.stderr

    version = json.loads((new_dir / "version.json").read_text())
    assert version["version"] == 2 and len(version["learnt_good_images"]) == 10  # 11 reviewed, 1 held for validation
    [held] = version["validation_good_images"]
    old_arrays, new_arrays = np.load(old_dir / "fitted.npz"), np.load(new_dir / "fitted.npz")
    if model == "patchcore":
        assert len(new_arrays["bank"]) > len(old_arrays["bank"])
        np.testing.assert_array_equal(new_arrays["bank"][:len(old_arrays["bank"])], old_arrays["bank"])
    else:
        assert int(new_arrays["count"]) == int(old_arrays["count"]) + 10
        assert not np.allclose(new_arrays["mean"], old_arrays["mean"])
    calibration = json.loads((new_dir / "calibration.json").read_text())
    old_calibration = json.loads((old_dir / "calibration.json").read_text())
    assert calibration["policy"] == old_calibration["policy"]
    assert [e["path"] for e in calibration["val"]] == [e["path"] for e in old_calibration["val"]] + [held]

    old, new = Predictor(str(old_dir), cpu_threads=1), Predictor(str(new_dir), cpu_threads=1)
    learnt = version["learnt_good_images"]
    before, after = [old.predict(p) for p in learnt], [new.predict(p) for p in learnt]
    assert all(a.score < b.score for a, b in zip(after, before))  # learnt: less anomalous now
    assert sum(a.label == "defect" for a in after) <= sum(b.label == "defect" for b in before)
    assert new.threshold.value == calibration["threshold"]["value"]
    n_val = len(old_calibration["val"])  # re-calibrated on one more validation image, the held-out review
    assert f"over {n_val} validation" in old.threshold.source and f"over {n_val + 1} validation" in new.threshold.source

    again = main_py("--mode", "update", "--model_dir", new_dir, "--reviews", reviews, "--output_dir",
                    tmp_path / "v3", "--folds", 2)
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "v3" / "version.json").read_text())["version"] == 3


@pytest.mark.slow
def test_an_update_that_confirms_fewer_defects_is_refused_and_writes_nothing(checkpoints, tmp_path):
    """An inspector's mistake: every defect also reviewed as a false alarm (under other request
    ids); learning them would let the defects through, so nothing is written."""
    reviews = tmp_path / "reviews.csv"
    write_reviews(reviews, [(f"f{k}", "false_alarm", p) for k, p in enumerate(DEFECTS)]
                  + [(f"d{k}", "defect_confirmed", p) for k, p in enumerate(DEFECTS)])
    new_dir = tmp_path / "v2"
    done = main_py("--mode", "update", "--model_dir", checkpoints / "out" / "patchcore" / "brick",
                   "--reviews", reviews, "--output_dir", new_dir, "--folds", 2)
    assert done.returncode == 2, done.stdout
    [line] = done.stderr.strip().splitlines()[-1:]
    assert line.startswith("error: update refused: the updated model confirms ") and "nothing written" in line
    assert "Traceback" not in done.stderr and "flagged before" in done.stdout  # the table still printed
    assert not new_dir.exists() and os.listdir(tmp_path) == ["reviews.csv"]


@pytest.mark.slow
def test_bad_update_input_is_one_line(checkpoints, tmp_path):
    model_dir = checkpoints / "out" / "padim" / "brick"
    cases = [(["--reviews", tmp_path / "none.db"], f"--reviews {tmp_path / 'none.db'}: file not found"),
             (["--reviews", model_dir / "train_config.json"], "neither a review database nor its CSV export")]
    for extra, words in cases:
        done = main_py("--mode", "update", "--model_dir", model_dir, "--output_dir", tmp_path / "new", *extra)
        assert done.returncode == 2 and words in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "new").exists()


@pytest.mark.slow
def test_a_tiled_patchcore_learns_the_tiles_of_reviewed_false_alarms(tmp_path):
    old_dir = train_tiny("patchcore", tmp_path / "out", "--tile_size", 128)
    reviews = tmp_path / "reviews.csv"
    write_reviews(reviews, [(f"g{k}", "false_alarm", p) for k, p in enumerate(brightened_goods(tmp_path / "kept"))]
                  + [(f"d{k}", "defect_confirmed", p) for k, p in enumerate(DEFECTS)])
    done = main_py("--mode", "update", "--model_dir", old_dir, "--reviews", reviews, "--output_dir",
                   tmp_path / "v2", "--folds", 2)
    assert done.returncode == 0, done.stderr
    old_bank, new_bank = np.load(old_dir / "fitted.npz")["bank"], np.load(tmp_path / "v2" / "fitted.npz")["bank"]
    from adkit.core.tiling import Tiling

    config = json.loads((old_dir / "train_config.json").read_text())
    tiles = len(Tiling.from_config(config).boxes(256, 256))  # of each 256x256 photo
    assert tiles > 1
    # 10 learnt photos, their tiles at 64 px: 8 x 8 patches each, a 0.1 coreset of them
    assert len(new_bank) - len(old_bank) == 10 * tiles * 64 // 10
    calibration = json.loads((tmp_path / "v2" / "calibration.json").read_text())
    assert len(calibration["val"]) == len(json.loads((old_dir / "calibration.json").read_text())["val"]) + 1


@pytest.mark.slow
def test_a_trained_method_keeps_its_weights_and_recalibrates_with_the_reviewed_good_parts(tmp_path):
    old_dir, new_dir = train_tiny("stfpm", tmp_path / "out", "--steps", 2), tmp_path / "v2"
    goods = brightened_goods(tmp_path / "kept")
    reviews = tmp_path / "reviews.csv"
    write_reviews(reviews, [(f"g{k}", "false_alarm", p) for k, p in enumerate(goods)])
    done = main_py("--mode", "update", "--model_dir", old_dir, "--reviews", reviews, "--output_dir", new_dir,
                   "--folds", 2)
    assert done.returncode == 0, done.stderr
    assert (new_dir / "checkpoint.pdparams").read_bytes() == (old_dir / "checkpoint.pdparams").read_bytes()
    version = json.loads((new_dir / "version.json").read_text())
    assert version["learnt_good_images"] == [] and sorted(version["validation_good_images"]) == sorted(goods)
    old_val = [e["path"] for e in json.loads((old_dir / "calibration.json").read_text())["val"]]
    new_val = [e["path"] for e in json.loads((new_dir / "calibration.json").read_text())["val"]]
    assert new_val == old_val + goods
