"""Tiled models end to end, all six: photos of 320x240 px cut into 128-px tiles, each resized to
a 64-px model input; train -> eval -> export -> infer.py, the Predictor and the service, every
map at the photo's own size, and each path's scores equal to the others'."""
import base64
import csv
import glob
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from test_main import run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "sample_data", "brick")
PHOTO_HW = (240, 320)
TILES = ["--image_size", "64", "--tile_size", "128", "--tile_stride", "96"]
TILES_PER_PHOTO = 9  # rows 0, 96, 112 x columns 0, 96, 192
FAST = {
    "rd4ad": ["--steps", "2", "--batch_size", "4", "--backbone", "efficientnet_lite0", "--backbone_weights", "none"],
    "efficientad_s": ["--steps", "2", "--teacher_weights", "none"],
    "efficientad_m": ["--steps", "1", "--teacher_weights", "none"],
    "stfpm": ["--steps", "2", "--batch_size", "4", "--backbone_weights", "none"],
    "patchcore": ["--coreset_ratio", "0.1", "--backbone_weights", "none"],
    "padim": ["--backbone_weights", "none"],
}
# engines reorder float32 sums (oneDNN); measured far below this for every model
TOLERANCE = 1e-4


def widen(image):
    """A 256x256 sample image as a 240x320 photo of the same texture (mirrored out to the side)."""
    cropped = image[:PHOTO_HW[0]]
    return cv2.copyMakeBorder(cropped, 0, 0, 32, 32, cv2.BORDER_REFLECT)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """sample_data's brick category as 320x240 photos, masks alike, in the MVTec layout."""
    root = tmp_path_factory.mktemp("photos")
    for path in glob.glob(os.path.join(SAMPLE, "**", "*.png"), recursive=True):
        rel = os.path.relpath(path, SAMPLE)
        out = root / "brick" / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(out), widen(image))
    return str(root)


def script(name, *args):
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    done = subprocess.run([sys.executable, os.path.join(ROOT, name), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(FAST))
def test_tiled_train_eval_export_infer_serve(photos, tmp_path, model, capsys):
    out = str(tmp_path / "out")
    common = ["--model", model, "--data_dir", photos, "--cls", "brick", "--output_dir", out, *TILES]
    assert run_cli(common + ["--mode", "train", "--val_ratio", "0.25", "--max_train_tiles", "40",
                             *FAST[model]]) == 0
    folder = os.path.join(out, model, "brick")
    stored = json.load(open(os.path.join(folder, "train_config.json")))
    assert stored["tile_size"] == [128, 128] and stored["tile_stride"] == [96, 96]
    logged = capsys.readouterr().err
    assert f"{TILES_PER_PHOTO} tiles of 128x128 px every 96x96 px" in logged
    # 14 training images, 25% held out: 10 photos of 9 tiles, a seeded 40 of them
    assert "a seeded sample of 40 of their 90 tiles" in logged
    calibration = json.load(open(os.path.join(folder, "calibration.json")))
    assert len(calibration["val"]) == 4 and calibration["synthetic"]

    # eval: maps and metrics at the photos' own size; no --mode train options repeated
    assert run_cli(["--model", model, "--data_dir", photos, "--cls", "brick", "--output_dir", out,
                    "--mode", "eval"]) == 0
    eval_dir = os.path.join(folder, "eval")
    rows = read_csv(os.path.join(eval_dir, "df_test.csv"))
    result = json.load(open(os.path.join(folder, "eval_metrics.json")))
    assert result["eval_resolution"] == "original"
    assert 0.0 <= result["pixel_auroc"] <= 1.0 and 0.0 <= result["aupro"] <= 1.0
    scratch = next(r for r in rows if r["defect_type"] == "scratch")
    rel = os.path.relpath(scratch["path"], os.path.join(photos, "brick"))
    amap = np.load(os.path.join(eval_dir, "anomaly_maps", "brick", rel.replace(".png", ".npy")))
    assert amap.shape == PHOTO_HW
    # the image score is the max of the stitched map at the photo's size
    assert float(scratch["score"]) == pytest.approx(float(amap.max()), rel=1e-6, abs=1e-6)
    eval_scores = {os.path.relpath(r["path"], photos): float(r["score"]) for r in rows}

    # the Predictor on the checkpoint gives eval's map and score
    from adkit import Predictor

    predictor = Predictor(folder)
    assert predictor.tiling is not None
    prediction = predictor.predict(scratch["path"])
    assert prediction.map.shape == PHOTO_HW
    np.testing.assert_allclose(prediction.map, amap, rtol=0, atol=TOLERANCE * float(np.abs(amap).max()))

    # export -> infer.py: the same scores through Paddle Inference
    export_dir = str(tmp_path / "export")
    script("export_model.py", "--model", model, "--checkpoint_dir", folder, "--save_dir", export_dir)
    deploy = json.load(open(os.path.join(export_dir, "deploy_config.json")))
    assert deploy["image_size"] == [64, 64] and deploy["tile_size"] == [128, 128]
    infer_dir = str(tmp_path / "infer")
    test_dir = os.path.join(photos, "brick", "test")
    done = script("infer.py", "--model_dir", export_dir, "--img_path", test_dir, "--output_dir", infer_dir)
    inferred = {os.path.relpath(r["path"], photos): float(r["score"])
                for r in read_csv(os.path.join(infer_dir, "df_test.csv"))}
    assert set(inferred) == set(eval_scores)
    top = max(abs(v) for v in eval_scores.values())
    for key, score in inferred.items():
        assert score == pytest.approx(eval_scores[key], abs=TOLERANCE * top)
    assert len(done.stdout.strip().splitlines()) == len(eval_scores)
    saved = np.load(os.path.join(infer_dir, os.path.relpath(scratch["path"], test_dir).replace(".png", ".npy")))
    assert saved.shape == PHOTO_HW


@pytest.mark.slow
def test_the_service_stitches_tiles_into_the_predictors_map(photos, tmp_path):
    """serve.py's app on a tiled PatchCore export: the photo's tiles go through the micro-batcher
    in waves and come back as one map of the photo's size, the Predictor's (Paddle Inference,
    and ONNX Runtime alike)."""
    from fastapi.testclient import TestClient

    from adkit import Predictor
    from adkit.deploy.serving.app import ServiceSettings, create_app
    from adkit.deploy.serving.model_slot import LoadedModel

    out = str(tmp_path / "out")
    assert run_cli(["--model", "patchcore", "--mode", "train", "--data_dir", photos, "--cls", "brick",
                    "--output_dir", out, *TILES, *FAST["patchcore"]]) == 0
    export_dir = str(tmp_path / "export")
    script("export_model.py", "--model", "patchcore", "--checkpoint_dir", os.path.join(out, "patchcore", "brick"),
           "--save_dir", export_dir, "--to_onnx")
    path = sorted(glob.glob(os.path.join(photos, "brick", "test", "scratch", "*.png")))[0]
    expected = Predictor(export_dir).predict(path)
    # ONNX Runtime runs the same tile graph under the same tiling
    onnx = Predictor(export_dir, backend="onnxruntime").predict(path)
    np.testing.assert_allclose(onnx.map, expected.map, rtol=0, atol=TOLERANCE * float(np.abs(expected.map).max()))
    settings = ServiceSettings(max_batch=4, predictor_options={"cpu_threads": 1})
    with TestClient(create_app(LoadedModel(export_dir, settings.predictor_options), settings)) as client:
        with open(path, "rb") as f:
            data = f.read()
        answer = client.post("/predict?map=true", files={"file": ("part.png", data, "image/png")}).json()
        # the page's overlay: shrunk to at most N pixels a side, the regions still in photo pixels
        small = client.post("/predict?overlay=true&overlay_max_side=160",
                            files={"file": ("part.png", data, "image/png")}).json()
        refused = client.post("/predict?overlay=true&overlay_max_side=big",
                              files={"file": ("part.png", data, "image/png")})
    assert answer["image_size"] == {"width": PHOTO_HW[1], "height": PHOTO_HW[0]}
    assert answer["score"] == pytest.approx(expected.score, rel=1e-5)
    assert answer["label"] == expected.label
    assert answer["batch_size"] <= 4  # 9 tiles in waves of --max_batch
    assert [r["area"] for r in answer["regions"]] == [r["area"] for r in expected.regions]
    overlay = cv2.imdecode(np.frombuffer(base64.b64decode(small["overlay_png"]), np.uint8), cv2.IMREAD_COLOR)
    # the photo part of the overlay is 160x120; a header line and the colour bar come around it
    assert overlay.shape[0] < PHOTO_HW[0] and overlay.shape[1] < PHOTO_HW[1]
    assert small["regions"] == answer["regions"]
    assert refused.status_code == 400 and "overlay_max_side" in refused.json()["error"]


@pytest.mark.slow
def test_int8_of_a_tiled_model_is_calibrated_on_tiles_and_checked_on_whole_photos(photos, tmp_path):
    """export_model.py --quantize int8 of a tiled PatchCore: the scales come from tiles of the
    training photos, the accuracy bar from the validation photos and their synthetic defects
    scored through their tiles (the counts of photos calibration made), kept or refused."""
    out = str(tmp_path / "out")
    assert run_cli(["--model", "patchcore", "--mode", "train", "--data_dir", photos, "--cls", "brick",
                    "--output_dir", out, "--val_ratio", "0.25", *TILES, *FAST["patchcore"]]) == 0
    folder = os.path.join(out, "patchcore", "brick")
    calibration = json.load(open(os.path.join(folder, "calibration.json")))
    # the training photos are listed, unscored: their tiles were fitted
    assert len(calibration["train"]) == 10 and {e["score"] for e in calibration["train"]} == {None}
    n_val, n_synthetic = len(calibration["val"]), len(calibration["synthetic"])
    export_dir = str(tmp_path / "int8")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    done = subprocess.run([sys.executable, os.path.join(ROOT, "export_model.py"), "--model", "patchcore",
                           "--checkpoint_dir", folder, "--save_dir", export_dir, "--quantize", "int8"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    counted = f"({n_val} validation + {n_synthetic} synthetic images"
    if done.returncode == 0:
        deploy = json.load(open(os.path.join(export_dir, "deploy_config.json")))
        check = deploy["quantization"]["check"]
        assert (check["n_validation"], check["n_synthetic"]) == (n_val, n_synthetic)
        assert deploy["tile_size"] == [128, 128] and deploy["precision"] == "int8"
        from adkit import Predictor

        path = sorted(glob.glob(os.path.join(photos, "brick", "test", "scratch", "*.png")))[0]
        assert Predictor(export_dir).predict(path).map.shape == PHOTO_HW
    else:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2 and lines[-1].startswith("error: --quantize int8: refused")
        assert counted in lines[-1]
        assert not os.path.exists(export_dir)


def test_tiles_on_several_processes_are_refused_before_any_work(photos, tmp_path, monkeypatch, capsys):
    from adkit.core import distributed

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    out = tmp_path / "out"
    assert run_cli(["--model", "rd4ad", "--mode", "train", "--data_dir", photos, "--cls", "brick",
                    "--output_dir", str(out), *TILES, *FAST["rd4ad"]]) == 2
    assert "--tile_size with --model rd4ad runs in one process" in capsys.readouterr().err
    assert not out.exists()
