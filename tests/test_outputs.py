"""Run folders, per-image outputs mirroring a tree, CSVs, and the streaming prediction loop."""
import csv
import os
import shutil
import stat

import cv2
import numpy as np
import pytest

from adkit.core.errors import UserError
from adkit.core.io_utils import default_dir_mode, default_file_mode
from adkit.outputs.folders import ImageOutputs, RunFolder, display_range
from adkit.deploy.predictor import PredictorBase, predict_files
from adkit.core.image_io import collect_images, folder_label

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BRICK_TEST = os.path.join(ROOT, "sample_data", "brick", "test")


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_collect_images_walks_a_tree_and_labels_come_from_folders():
    root, paths = collect_images(BRICK_TEST)
    assert root == BRICK_TEST
    expected = sorted(os.path.join(d, n) for d, _, names in os.walk(BRICK_TEST) for n in names)
    assert paths == expected
    assert folder_label(os.path.join(BRICK_TEST, "good", "000.png")) == ("good", "good")
    assert folder_label(os.path.join(BRICK_TEST, "scratch", "000.png")) == ("scratch", "defect")
    # a folder with no 'good' beside it says nothing about the parts in it
    assert folder_label(os.path.join(ROOT, "sample_data", "brick", "train", "good", "000.png")) == ("good", "good")
    assert folder_label(os.path.join(ROOT, "README.md")) == ("", "")
    single_root, single = collect_images(expected[0])
    assert single == [expected[0]] and single_root == os.path.dirname(expected[0])


def test_run_folder_replaces_its_own_runs_only_and_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "a" / "b" / "run"
    with pytest.raises(RuntimeError):
        with RunFolder(str(target)) as run:
            open(run.file("x.txt"), "w").close()
            raise RuntimeError("boom")
    assert not (tmp_path / "a").exists()  # the parents it made are gone too

    with RunFolder(str(target)) as run:
        open(run.file("old.txt"), "w").close()
    assert mode_of(target) == default_dir_mode()
    with RunFolder(str(target)) as run:  # a second run: a fresh folder, no stale files
        os.makedirs(run.file("sub"))
        open(run.file(os.path.join("sub", "new.txt")), "w").close()
    assert sorted(os.listdir(target)) == ["run.json", "sub"]
    assert os.listdir(tmp_path / "a" / "b") == ["run"]  # no staging or old folder left

    users = tmp_path / "users"
    users.mkdir()
    (users / "thesis.docx").write_text("precious")
    with pytest.raises(UserError, match="was not written by a run"):
        RunFolder(str(users))
    assert (users / "thesis.docx").read_text() == "precious"


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_image_outputs_mirror_the_tree_with_maps_masks_and_csv(tmp_path):
    threshold = 0.5
    image = cv2.cvtColor(cv2.imread(os.path.join(BRICK_TEST, "scratch", "000.png")), cv2.COLOR_BGR2RGB)
    image = image[:200, :150]  # not the model size, not square
    model_map = np.zeros((8, 8), np.float32)
    model_map[2:4, 2:4] = 1.0
    with RunFolder(str(tmp_path / "out")) as run:
        outputs = ImageOutputs(run, threshold, display_range((0.0, 1.0), threshold), "tiff")
        outputs.add("in/scratch/000.png", os.path.join("scratch", "000.png"), image, model_map, 1.0,
                    "scratch", "defect")
        outputs.add("in/scratch/000.jpg", os.path.join("scratch", "000.jpg"), image, model_map * 0, 0.0,
                    "scratch", "defect")
        outputs.skip("in/good/bad.png", "cannot decode image", "good", "good")
        outputs.write_csv()
    out = tmp_path / "out" / "scratch"
    full = cv2.imread(str(out / "000.tiff"), cv2.IMREAD_UNCHANGED)
    expected = cv2.resize(model_map, (150, 200), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(full, expected)
    mask = cv2.imread(str(out / "000_mask.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(mask > 0, expected >= threshold)
    assert cv2.imread(str(out / "000_1_mask.png"), cv2.IMREAD_UNCHANGED).max() == 0  # same stem, own files
    overlay = cv2.imread(str(out / "000_overlay.png"))
    assert overlay.shape[0] > 200 and overlay.shape[1] > 150  # header and colour bar around the image
    assert mode_of(out / "000_overlay.png") == default_file_mode()
    rows = read_rows(tmp_path / "out" / "df_test.csv")
    assert [(r["path"], r["prediction"], r["status"], r["overlay"]) for r in rows] == [
        ("in/scratch/000.png", "defect", "ok", "scratch/000_overlay.png"),
        ("in/scratch/000.jpg", "good", "ok", "scratch/000_1_overlay.png"),
        ("in/good/bad.png", "", "skipped: cannot decode image", "")]


def test_reserved_names_depend_on_the_list_not_on_which_images_are_added(tmp_path):
    """What lets several processes each add their block of one list (predict_into_folder)."""
    image = np.zeros((6, 6, 3), np.uint8)
    model_map = np.zeros((4, 4), np.float32)
    relatives = [os.path.join("s", n) for n in ("a.bmp", "a.jpg", "a.png", "a_1.png", "b.png")]
    with RunFolder(str(tmp_path / "out")) as run:
        whole, second_half = (ImageOutputs(run, None, (0.0, 1.0), "png") for _ in range(2))
        for outputs in (whole, second_half):
            outputs.reserve(relatives)
        whole.skip("a.bmp", "cannot decode image")  # its name stays unused
        for rel in relatives[1:3]:
            whole.add(rel, rel, image, model_map, 0.0)
        for rel in relatives[3:]:
            second_half.add(rel, rel, image, model_map, 0.0)
    assert [r[-1] for r in whole.rows + second_half.rows] == [
        "", "s/a_1_overlay.png", "s/a_2_overlay.png", "s/a_1_1_overlay.png", "s/b_overlay.png"]


def test_display_range_puts_the_threshold_in_the_middle():
    assert display_range((0.2, 0.9), 0.5) == pytest.approx((0.2, 0.8))
    assert display_range((0.2, 0.9), None) == (0.2, 0.9)
    assert display_range((0.2, 0.9), 0.1) == (0.2, 0.9)  # threshold below typical good values


class FakePredictor(PredictorBase):
    """Map = the image's mean red channel everywhere, at a 4x4 model size."""
    image_size = (4, 4)

    def __init__(self):
        self.batches = []

    def preprocess(self, image):
        return cv2.resize(image, (4, 4), interpolation=cv2.INTER_AREA).transpose(2, 0, 1) / 255.0

    def run(self, batch):
        self.batches.append(len(batch))
        maps = np.repeat(batch[:, 0].mean(axis=(1, 2))[:, None, None], 4, 1).repeat(4, 2)
        return maps.astype(np.float32), maps.max(axis=(1, 2))

    def display_range(self, first_maps):
        return 0.0, 1.0


def tree_with_a_bad_image(tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(BRICK_TEST, tree)
    (tree / "good" / "zz_truncated.png").write_bytes(
        open(os.path.join(BRICK_TEST, "good", "000.png"), "rb").read()[:500])
    return str(tree)


def test_predict_files_streams_batches_and_skips_bad_images_when_asked(tmp_path):
    root, paths = collect_images(tree_with_a_bad_image(tmp_path))
    predictor = FakePredictor()
    with RunFolder(str(tmp_path / "out")) as run:
        outputs = ImageOutputs(run, 0.5, None, "png")
        predict_files(predictor, root, paths, outputs, batch_size=3, skip_bad=True)
        outputs.write_csv()
    rows = read_rows(tmp_path / "out" / "df_test.csv")
    assert [r["path"] for r in rows] == paths  # the skipped one in its place, not ahead of its batch
    assert [r["path"] for r in rows if r["status"] == "ok"] == [p for p in paths if "zz_" not in p]
    skipped = [r for r in rows if r["status"] != "ok"]
    assert len(skipped) == 1 and skipped[0]["status"].startswith("skipped: cannot decode")
    assert sum(predictor.batches) == len(paths) - 1 and max(predictor.batches) == 3
    for row in rows:
        if row["status"] == "ok":
            image = cv2.cvtColor(cv2.imread(row["path"]), cv2.COLOR_BGR2RGB)
            expected = predictor.preprocess(image)[0].mean()
            assert float(row["score"]) == pytest.approx(expected, rel=1e-6)
            assert row["prediction"] == ("defect" if np.float32(row["score"]) >= np.float32(0.5) else "good")
            rel = os.path.relpath(row["path"], root)
            assert os.path.isfile(tmp_path / "out" / rel.replace(".png", "_overlay.png"))
            assert row["ground_truth"] == ("good" if rel.startswith("good") else "defect")


def test_a_bad_image_stops_the_run_naming_it_and_leaves_no_output(tmp_path):
    root, paths = collect_images(tree_with_a_bad_image(tmp_path))
    with pytest.raises(UserError, match="zz_truncated.png: cannot decode"):
        with RunFolder(str(tmp_path / "out")) as run:
            predict_files(FakePredictor(), root, paths, ImageOutputs(run, 0.5, None, "png"), 2)
    assert not (tmp_path / "out").exists() and sorted(os.listdir(tmp_path)) == ["tree"]


def test_progress_off_a_terminal_is_plain_log_lines(monkeypatch, caplog):
    import logging

    from adkit.core import progress

    monkeypatch.setattr(progress, "PLAIN_PROGRESS_SECONDS", 0.0)
    caplog.set_level(logging.INFO, logger="adkit")
    bar = progress.progress(total=3, desc="training rd4ad", unit="steps")  # pytest captures stderr
    for _ in range(3):
        bar.set_postfix(loss="0.5")
        bar.update(1)
    bar.close()
    assert [r.getMessage() for r in caplog.records] == [f"training rd4ad: {i}/3 steps, about 0 s left (loss=0.5)"
                                                        for i in (1, 2, 3)]
    assert list(progress.progress(range(4), total=4, desc="x")) == [0, 1, 2, 3]


def test_metrics_summaries_merge_per_model_and_category(tmp_path):
    """Each eval adds its categories to <out>/<model>/metrics.json and its model to
    <out>/metrics.json: a gravel eval keeps brick, a padim eval keeps rd4ad."""
    import json

    from adkit.outputs.eval_folder import write_metrics_summaries

    def result(auroc):
        return {"image_auroc": auroc, "pixel_auroc": None, "aupro": None, "f1_max": None}

    write_metrics_summaries(str(tmp_path), "rd4ad", {"brick": result(0.9)})
    write_metrics_summaries(str(tmp_path), "rd4ad", {"gravel": result(0.7)})
    write_metrics_summaries(str(tmp_path), "padim", {"brick": result(0.5)})
    write_metrics_summaries(str(tmp_path), "rd4ad", {"brick": result(1.0)})  # newest result wins
    rd4ad = json.loads((tmp_path / "rd4ad" / "metrics.json").read_text())
    assert rd4ad["categories"] == {"brick": result(1.0), "gravel": result(0.7)}
    assert rd4ad["mean"]["image_auroc"] == pytest.approx(0.85)  # (1.0 + 0.7) / 2
    top = json.loads((tmp_path / "metrics.json").read_text())
    assert sorted(top["models"]) == ["padim", "rd4ad"]
    assert top["models"]["rd4ad"] == rd4ad
    assert top["models"]["padim"]["categories"] == {"brick": result(0.5)}
    assert sorted(os.listdir(tmp_path)) == ["metrics.json", "padim", "rd4ad"]  # no temp files left
    (tmp_path / "metrics.json").write_text("{not json")  # a damaged summary is started again
    write_metrics_summaries(str(tmp_path), "padim", {"gravel": result(0.6)})
    assert sorted(json.loads((tmp_path / "metrics.json").read_text())["models"]) == ["padim"]
