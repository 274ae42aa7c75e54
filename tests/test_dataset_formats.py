"""The layouts users bring (MVTec LOCO AD, VisA, plain folders) on tiny trees written here from
sample_data's brick photos, each read in place, trained and evaluated end to end; evaluation at
the images' own resolution against an independent computation."""
import csv
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from test_main import run_cli
from adkit.evaluate import metrics
from adkit.core.errors import UserError
from adkit.evaluate.evaluation import evaluate_dataset
from adkit.datasets import TestDataset, find_categories, open_category

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BRICK = os.path.join(ROOT, "sample_data", "brick")
LOCO_LIMITS = {"0.01", "0.05", "0.1", "0.3", "1.0"}


def brick(split, kind):
    folder = os.path.join(BRICK, split, kind)
    return [os.path.join(folder, name) for name in sorted(os.listdir(folder))]


def brick_mask(path):
    stem = os.path.splitext(os.path.basename(path))[0]
    kind = os.path.basename(os.path.dirname(path))
    return cv2.imread(os.path.join(BRICK, "ground_truth", kind, f"{stem}_mask.png"), cv2.IMREAD_GRAYSCALE)


def put(path, array=None, source=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if source:
        shutil.copyfile(source, path)
    else:
        assert cv2.imwrite(str(path), array)
    return str(path)


# ----------------------------------------------------------------------------- MVTec LOCO AD

DEFECTS_CONFIG = [
    {"defect_name": "scratch", "pixel_value": 2, "saturation_threshold": 300, "relative_saturation": False},
    {"defect_name": "stain", "pixel_value": 7, "saturation_threshold": 0.5, "relative_saturation": True},
]


def make_loco(root):
    """box/: train 8, validation 2, test good 2, structural 2 (scratch: mask value 2, plus a
    second defect of value 7 in one of them), logical 1 (stain, value 7)."""
    cat = os.path.join(root, "box")
    for i, path in enumerate(brick("train", "good")[:8]):
        put(f"{cat}/train/good/{i:03d}.png", source=path)
    for i, path in enumerate(brick("train", "good")[8:10]):
        put(f"{cat}/validation/good/{i:03d}.png", source=path)
    for i, path in enumerate(brick("test", "good")[:2]):
        put(f"{cat}/test/good/{i:03d}.png", source=path)
    for i, path in enumerate(brick("test", "scratch")[:2]):
        put(f"{cat}/test/structural_anomalies/{i:03d}.png", source=path)
        put(f"{cat}/ground_truth/structural_anomalies/{i:03d}/000.png", (brick_mask(path) > 0).astype(np.uint8) * 2)
    extra = np.zeros((256, 256), np.uint8)
    extra[200:220, 10:40] = 7
    put(f"{cat}/ground_truth/structural_anomalies/000/001.png", extra)
    stain = brick("test", "stain")[0]
    put(f"{cat}/test/logical_anomalies/000.png", source=stain)
    put(f"{cat}/ground_truth/logical_anomalies/000/000.png", (brick_mask(stain) > 0).astype(np.uint8) * 7)
    with open(f"{cat}/defects_config.json", "w") as f:
        json.dump(DEFECTS_CONFIG, f)
    return str(root)


def test_loco_validation_split_mask_folders_and_saturation_areas(tmp_path):
    data = make_loco(tmp_path)
    cfg = {"data_format": "loco", "data_dir": data}
    assert find_categories(cfg) == ["box"]
    category = open_category(cfg, "box")
    assert [os.path.basename(p) for p in category.val_paths()] == ["000.png", "001.png"]
    assert category.subsets == {"logical": ("logical_anomalies",), "structural": ("structural_anomalies",)}
    items = category.test_items()
    assert [i.defect_type for i in items] == ["good", "good", "logical_anomalies",
                                             "structural_anomalies", "structural_anomalies"]
    test_set = TestDataset(items, 64, category.defect_kinds)
    assert test_set.find_bad() == []
    first = (brick_mask(brick("test", "scratch")[0]) > 0)
    defects = test_set.defects(3)
    assert [int(m.sum()) for m, _ in defects] == [int(first.sum()), 600]
    # absolute threshold 300 px (capped at the area); relative 0.5 of 600 px
    assert [s for _, s in defects] == [min(300, int(first.sum())), 300]
    np.testing.assert_array_equal(test_set.full_mask(3), first | (defects[1][0]))
    small = test_set.defects(3, at_model_size=True)
    # at 64 px the image has 1/16 of its pixels: 300 px of 256^2 become 18.75 -> 18 px
    assert small[0][0].shape == (64, 64) and small[0][1] == min(18, int(small[0][0].sum()))
    assert small[1][1] == int(0.5 * small[1][0].sum())
    assert test_set.defects(0) == []  # a good image: no defect, only false positives


def test_loco_bad_files_are_named(tmp_path):
    data = make_loco(tmp_path)
    cfg = {"data_format": "loco", "data_dir": data}
    config = tmp_path / "box" / "defects_config.json"
    config.write_text(json.dumps(DEFECTS_CONFIG[:1]))
    test_set = TestDataset(open_category(cfg, "box").test_items(), 64, open_category(cfg, "box").defect_kinds)
    bad = test_set.find_bad()
    assert len(bad) == 2 and "defect id 7, which the defects_config.json does not list (known: 2)" in bad[0][1]
    config.write_text("[{\"defect_name\": \"x\"}]")
    with pytest.raises(UserError, match="defects_config.json: expected a list of"):
        open_category(cfg, "box")
    os.remove(config)
    with pytest.raises(UserError, match="defects_config.json: file not found"):
        open_category(cfg, "box")
    config.write_text(json.dumps(DEFECTS_CONFIG))
    shutil.rmtree(tmp_path / "box" / "ground_truth" / "logical_anomalies" / "000")
    with pytest.raises(UserError, match="logical_anomalies/000: mask folder missing"):
        open_category(cfg, "box").test_items()


# ----------------------------------------------------------------------------- VisA

def make_visa(root, columns=("object", "split", "label", "image", "mask")):
    rows = []
    for i, path in enumerate(brick("train", "good")[:8]):
        rows.append(("candle", "train", "normal", put(f"{root}/candle/Data/Images/Normal/{i:04d}.png", source=path), ""))
    for i, path in enumerate(brick("test", "good")[:2]):
        rows.append(("candle", "test", "normal", put(f"{root}/candle/Data/Images/Normal/t{i:03d}.png", source=path), ""))
    for i, path in enumerate(brick("test", "scratch")[:2]):
        image = put(f"{root}/candle/Data/Images/Anomaly/{i:03d}.png", source=path)
        mask = put(f"{root}/candle/Data/Masks/Anomaly/{i:03d}.png", (brick_mask(path) > 0).astype(np.uint8) * 3)
        rows.append(("candle", "test", "anomaly", image, mask))
    os.makedirs(f"{root}/split_csv")
    with open(f"{root}/split_csv/1cls.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([os.path.relpath(v, root) if v.startswith(str(root)) else v for v in row][:len(columns)])
    return str(root)


def test_visa_reads_the_split_file_in_place(tmp_path):
    data = make_visa(tmp_path)
    cfg = {"data_format": "visa", "data_dir": data}
    assert find_categories(cfg) == ["candle"]
    category = open_category(cfg, "candle")
    assert len(category.train_paths()) == 8 and category.val_paths() is None
    items = category.test_items()
    assert [i.defect_type for i in items] == ["good", "good", "anomaly", "anomaly"]
    mask, has = TestDataset(items, 64).mask(2)
    expected = cv2.resize((brick_mask(brick("test", "scratch")[0]) > 0).astype(np.uint8), (64, 64),
                          interpolation=cv2.INTER_NEAREST)
    assert has and np.array_equal(mask, expected)  # mask value 3: nonzero = defect
    with pytest.raises(UserError, match="--cls bottle: no such object .*found: candle"):
        open_category(cfg, "bottle")


@pytest.mark.slow
def test_visa_csv_without_a_column_is_one_line(tmp_path):
    data = make_visa(tmp_path, columns=("object", "split", "label", "image"))
    done = subprocess.run([sys.executable, "main.py", "--model", "patchcore", "--mode", "train",
                           "--data_format", "visa", "--data_dir", data, "--output_dir", str(tmp_path / "o")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: ") and "1cls.csv: missing column(s) mask" in lines[0]
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- your own folders

def make_folders(root):
    dirs = {name: str(root / name) for name in ("good", "ok", "ng", "masks")}
    for i, path in enumerate(brick("train", "good")[:8]):
        put(f"{dirs['good']}/{i:03d}.png", source=path)
    for i, path in enumerate(brick("test", "good")[:2]):
        put(f"{dirs['ok']}/{i:03d}.png", source=path)
    for i, path in enumerate(brick("test", "scratch")[:2]):
        put(f"{dirs['ng']}/scratch/{i:03d}.png", source=path)
        put(f"{dirs['masks']}/scratch/{i:03d}_mask.png", brick_mask(path))
    stain = brick("test", "stain")[0]
    put(f"{dirs['ng']}/s1.png", source=stain)
    put(f"{dirs['masks']}/s1.png", brick_mask(stain))
    return dirs


def folder_cfg(dirs, **extra):
    return {"data_format": "folder", "train_dir": dirs["good"], "test_good_dir": dirs["ok"],
            "test_defect_dir": dirs["ng"], "mask_dir": dirs["masks"], **extra}


def test_folder_format_matches_masks_by_name(tmp_path):
    dirs = make_folders(tmp_path)
    category = open_category(folder_cfg(dirs), "all")
    assert category.name == "good" and category.root == str(tmp_path)
    items = category.test_items()
    assert [(i.defect_type, os.path.relpath(i.mask_path, dirs["masks"]) if i.mask_path else None) for i in items] == [
        ("good", None), ("good", None), ("defect", "s1.png"),
        ("scratch", os.path.join("scratch", "000_mask.png")), ("scratch", os.path.join("scratch", "001_mask.png"))]
    assert open_category(folder_cfg(dirs), "parts").name == "parts"


@pytest.mark.slow
@pytest.mark.parametrize("damage, says", [
    (lambda d: put(f"{d['masks']}/scratch/009_mask.png", np.zeros((8, 8), np.uint8)),
     "1 mask(s) match no image in --test_defect_dir, e.g. "),
    (lambda d: os.remove(f"{d['masks']}/s1.png"), "no mask for 1 defective image(s), e.g. "),
    (lambda d: shutil.rmtree(d["good"]), "--train_dir"),
])
def test_folder_format_bad_input_is_one_line(tmp_path, damage, says):
    dirs = make_folders(tmp_path)
    damage(dirs)
    done = subprocess.run([sys.executable, "main.py", "--model", "patchcore", "--mode", "eval",
                           "--data_format", "folder", "--train_dir", dirs["good"], "--test_good_dir", dirs["ok"],
                           "--test_defect_dir", dirs["ng"], "--mask_dir", dirs["masks"],
                           "--output_dir", str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], lines


# ----------------------------------------------------------------------------- end to end

def train_and_eval(tmp_path, data_args, cls, *eval_args):
    out = str(tmp_path / "out")
    common = ["--model", "patchcore", "--output_dir", out, "--image_size", "64", "--cls", cls] + data_args
    assert run_cli(common + ["--mode", "train"]) == 0
    assert run_cli(common + ["--mode", "eval", *eval_args]) == 0
    return json.load(open(os.path.join(out, "patchcore", "metrics.json")))["categories"][cls], os.path.join(out, "patchcore", cls)


@pytest.mark.slow
def test_loco_end_to_end_reports_subsets_and_spro(tmp_path, capsys):
    data = make_loco(tmp_path / "data")
    result, folder = train_and_eval(tmp_path, ["--data_format", "loco", "--data_dir", data], "box",
                                    "--eval_resolution", "original", "--save_format", "tiff")
    calibration = json.load(open(os.path.join(folder, "calibration.json")))
    assert len(calibration["val"]) == 2 and len(calibration["train"]) == 8  # LOCO's own validation set
    assert result["eval_resolution"] == "original"
    assert set(result["subsets"]) == {"logical", "structural"} and set(result["au_spro"]) == LOCO_LIMITS
    for values in list(result["subsets"].values()) + [result]:
        assert all(0.0 <= v <= 1.0 for v in values["au_spro"].values())
        assert 0.0 <= values["image_auroc"] <= 1.0 and 0.0 <= values["aupro"] <= 1.0
    assert "au_spro@0.05" in capsys.readouterr().out
    html = open(os.path.join(folder, "eval", "report.html"), encoding="utf-8").read()
    assert "AU-sPRO@0.05" in html and "original resolution" in html and "structural" in html
    # maps where the official scripts look: <category>/test/<type>/<name>.tiff, full size
    tiff = os.path.join(folder, "eval", "anomaly_maps", "box", "test", "logical_anomalies", "000.tiff")
    import tifffile
    assert tifffile.imread(tiff).shape == (256, 256)


@pytest.mark.slow
def test_visa_and_folder_end_to_end(tmp_path):
    visa, _ = train_and_eval(tmp_path / "v", ["--data_format", "visa", "--data_dir", make_visa(tmp_path / "visa")],
                             "candle")
    assert set(visa["per_type"]) == {"anomaly"} and visa["eval_resolution"] == "model"
    dirs = make_folders(tmp_path / "own")
    args = ["--data_format", "folder"] + [x for k in ("train_dir", "test_good_dir", "test_defect_dir", "mask_dir")
                                          for x in (f"--{k}", dirs[{"train_dir": "good", "test_good_dir": "ok",
                                                                   "test_defect_dir": "ng", "mask_dir": "masks"}[k]])]
    own, folder = train_and_eval(tmp_path / "f", args, "parts")
    assert set(own["per_type"]) == {"defect", "scratch"} and own["pixel_auroc"] is not None
    rows = list(csv.DictReader(open(os.path.join(folder, "eval", "df_test.csv"))))
    assert sorted(r["overlay"] for r in rows)[0] == os.path.join("ng", "s1_overlay.png")


# ----------------------------------------------------------------------------- full resolution

def smooth_maps(batch):
    """A stand-in model: a smooth map of the input (what matters is that it is deterministic)."""
    amap = cv2.blur(batch.mean(1).transpose(1, 2, 0), (5, 5)).reshape(batch.shape[2], batch.shape[3], -1)
    amap = np.ascontiguousarray(amap.transpose(2, 0, 1)[:, None])
    return amap, amap.reshape(len(batch), -1).max(1)


def test_original_resolution_matches_an_independent_computation(tmp_path):
    """Images of 200x280 scored at 64 px: every map upsampled by cv2 here and scored with the exact
    in-memory metrics must give what the streaming evaluation gives."""
    sources = brick("test", "good")[:3] + brick("test", "scratch") + brick("test", "stain")
    items_dir = tmp_path / "part"
    for path in sources:
        kind = os.path.basename(os.path.dirname(path))
        image = cv2.resize(cv2.imread(path), (280, 200), interpolation=cv2.INTER_AREA)
        put(items_dir / "test" / kind / os.path.basename(path), image)
        if kind != "good":
            mask = cv2.resize(brick_mask(path), (280, 200), interpolation=cv2.INTER_NEAREST)
            put(items_dir / "ground_truth" / kind / os.path.basename(path).replace(".png", "_mask.png"), mask)
    test_set = TestDataset(open_category({"data_dir": str(tmp_path)}, "part").test_items(), 64).preload()
    result, scores, maps, curve = evaluate_dataset(smooth_maps, test_set, 4, "original")
    assert result["eval_resolution"] == "original"
    full = np.stack([cv2.resize(m, (280, 200), interpolation=cv2.INTER_LINEAR) for m in maps])
    masks = np.stack([test_set.full_mask(i) for i in range(len(test_set))])
    labels = np.array([item.label for item in test_set.items])
    assert result["pixel_auroc"] == pytest.approx(metrics.pixel_auroc(masks, full), abs=1e-5)
    assert result["aupro"] == pytest.approx(metrics.aupro(masks, full), abs=1e-5)
    assert result["image_auroc"] == pytest.approx(metrics.image_auroc(labels, full.max(axis=(1, 2))), abs=1e-12)
    model_result = evaluate_dataset(smooth_maps, test_set, 4, "model")[0]
    assert model_result["eval_resolution"] == "model"
    assert model_result["aupro"] != result["aupro"]  # the two protocols do differ


# ----------------------------------------------------------------------------- the dataset makers

def tool(*args):
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.slow
def test_coco_and_synthetic_datasets_train_and_evaluate(tmp_path):
    """What tools/prepare_dataset.py and tools/make_synthetic.py write is a dataset main.py
    trains and evaluates on, with the masks the annotations and the defects say."""
    labeled, normal = tmp_path / "labeled", tmp_path / "normal"
    images, annotations = [], []
    for i, path in enumerate(brick("test", "scratch") + brick("test", "stain")):
        name = f"part{i}.png"
        put(labeled / name, source=path)
        images.append({"id": i, "file_name": name, "height": 256, "width": 256})
        contours, _ = cv2.findContours((brick_mask(path) > 0).astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_NONE)
        polygons = [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]
        annotations.append({"id": i, "image_id": i, "category_id": 1 + (i >= 3), "segmentation": polygons})
    for i, path in enumerate(brick("train", "good")):
        put(normal / f"{i:03d}.png", source=path)
    coco = tmp_path / "instances.json"
    coco.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "Scratch"}, {"id": 2, "name": "stain"}]}))
    data = tmp_path / "data"
    tool("tools/prepare_dataset.py", "--annotations", str(coco), "--labeled_dir", str(labeled),
         "--unlabeled_dir", str(normal), "--output_dir", str(data / "coco_part"), "--train_ratio", "0.8")
    tool("tools/make_synthetic.py", "--good_dir", str(normal), "--output_dir", str(data / "synth_part"),
         "--per_kind", "1", "--kinds", "scratch,missing_piece,foreign_object")
    coco_result, _ = train_and_eval(tmp_path / "a", ["--data_dir", str(data)], "coco_part")
    assert set(coco_result["per_type"]) == {"scratch", "stain"} and coco_result["pixel_auroc"] is not None
    synth_result, _ = train_and_eval(tmp_path / "b", ["--data_dir", str(data)], "synth_part")
    assert set(synth_result["per_type"]) == {"scratch", "missing_piece", "foreign_object"}
    # the polygon outlines cover the annotated pixels (cv2 fills the interior and the boundary)
    mask = cv2.imread(str(data / "coco_part" / "ground_truth" / "scratch" / "part0_mask.png"), cv2.IMREAD_GRAYSCALE)
    assert np.all(mask[brick_mask(brick("test", "scratch")[0]) > 0] == 255)
