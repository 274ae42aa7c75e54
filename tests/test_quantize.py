"""export_model.py --quantize int8: an int8 graph Paddle Inference runs with oneDNN int8, kept only
when it detects as well as fp32 on the training side, else one refusal line and no folder."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 128
CLS = "brick"
# PaDiM with the shipped ImageNet EfficientNet-Lite0 (no training: one pass over 11 images) is
# the cheapest model with real features; at 128 px its whole graph passes the bar (at 64 px,
# checked on 3 validation + 27 synthetic images, its int8 image AUROC fell 0.938 -> 0.877).
MODEL = "padim"
# Pearson correlation of the int8 and fp32 maps of one image. Measured for this PaDiM at 128 px:
# min 0.966 over the 7 brick test images used below (0.935 over all 17, mean 0.979); at export,
# on the 3 validation + 27 synthetic images, min 0.961 (mean 0.985). A broken int8 graph gives
# ~0 or a flat map (nan): RD4AD's, refused at 256 px, correlated 0.72 at best and was nan once.
MIN_MAP_CORRELATION = 0.9


def cli(*args, code=None):
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    command = [sys.executable] + (["-c", code] if code else []) + [str(a) for a in args]
    return subprocess.run(command, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A PaDiM fitted at 64 px, exported fp32 and int8."""
    from adkit.pipelines.train import train
    from adkit.options.config import resolve_config
    from adkit.commands.export import export

    out = tmp_path_factory.mktemp("quantize")
    train(resolve_config(["--model", MODEL, "--mode", "train", "--data_dir", os.path.join(ROOT, "sample_data"),
                               "--cls", CLS, "--output_dir", str(out), "--image_size", str(SIZE),
                               "--backbone", "efficientnet_lite0"]), CLS)
    ckpt = out / MODEL / CLS
    export(MODEL, str(ckpt), str(out / "fp32"))
    export(MODEL, str(ckpt), str(out / "int8"), quantize="int8")
    return {"ckpt": ckpt, "fp32": out / "fp32", "int8": out / "int8", "root": out}


@pytest.mark.slow
def test_int8_export_records_what_was_quantised_and_checked(exported):
    folder = exported["int8"]
    assert sorted(os.listdir(folder)) == ["calibration.json", "deploy_config.json", "inference.pdiparams",
                                          "inference.pdmodel"]
    deploy = json.loads((folder / "deploy_config.json").read_text())
    assert deploy["precision"] == "int8"
    q = deploy["quantization"]
    assert q["level"] in ("graph", "backbone") and q["quantized_ops"]["conv2d"] > 0
    check = q["check"]
    assert check["auroc_fp32"] - check["auroc_int8"] < q["max_auroc_drop"] == 0.005
    assert check["n_validation"] >= 1 and check["n_synthetic"] >= 1
    # the threshold comes from the int8 model's own training-side scores
    calibration = json.loads((folder / "calibration.json").read_text())
    assert deploy["threshold"] == calibration["threshold"]["value"]
    fp32 = json.loads((exported["fp32"] / "deploy_config.json").read_text())
    assert fp32["precision"] == "fp32" and fp32["quantization"] is None


@pytest.mark.slow
def test_int8_graph_runs_with_onednn_int8_and_its_maps_follow_fp32(exported):
    from adkit.core.compat import runs_old_ir
    from adkit.deploy.engines import PaddleEngine
    from adkit.core.image_io import find_images, model_input, read_rgb

    paths = find_images(os.path.join(ROOT, "sample_data", CLS, "test"), "test")
    batch = np.stack([model_input(read_rgb(p), SIZE) for p in paths])
    fp32 = PaddleEngine(str(exported["fp32"]), image_size=SIZE)
    int8 = PaddleEngine(str(exported["int8"]), image_size=SIZE)  # int8 read from deploy_config.json
    assert int8.quantized and int8.config.mkldnn_int8_enabled() and runs_old_ir(int8.config)
    maps32, scores32 = fp32.run(batch[:3])
    maps8, scores8 = int8.run(batch[:3])  # a dynamic batch: 3, then 4
    more32, more8 = fp32.run(batch[3:7]), int8.run(batch[3:7])
    maps32, maps8 = np.concatenate([maps32, more32[0]]), np.concatenate([maps8, more8[0]])
    assert maps8.shape == maps32.shape == (7, 1, SIZE, SIZE)
    correlation = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(maps32, maps8)]
    assert min(correlation) > MIN_MAP_CORRELATION, correlation
    assert np.all(np.isfinite(scores8))


@pytest.mark.slow
def test_infer_runs_the_int8_folder_without_new_flags(exported, tmp_path):
    images = os.path.join(ROOT, "sample_data", CLS, "test", "good")
    proc = cli(os.path.join(ROOT, "infer.py"), "--model_dir", exported["int8"], "--img_path", images,
               "--output_dir", tmp_path / "out", "--save_format", "png")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "out" / "df_test.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(os.listdir(images)) and len(proc.stdout.splitlines()) == len(rows)
    assert "squashed" not in proc.stderr and "---" not in proc.stderr  # oneDNN's pass notes silenced


@pytest.mark.slow
def test_refusal_is_one_line_and_leaves_no_folder(exported, tmp_path):
    # Force the refusal through the module's bar (no drop can be below -1), one level for speed.
    code = ("import sys, adkit.deploy.quantize as q, export_model; q.MAX_AUROC_DROP = -1.0; "
            "q.LEVELS = {'backbone': q.LEVELS['backbone']}; export_model.main(sys.argv[1:])")
    save_dir = tmp_path / "refused"
    proc = cli("--model", MODEL, "--checkpoint_dir", exported["ckpt"], "--save_dir", save_dir,
               "--quantize", "int8", code=code)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("error: --quantize int8: ") and line.endswith("; export without --quantize")
    assert "image AUROC " in line and " validation + " in line and " synthetic images" in line
    assert "wrong decisions " in line and "no more wrong decisions than fp32" in line
    assert os.listdir(tmp_path) == []  # no export, no staging or work folder left


@pytest.mark.slow
def test_int8_folder_refuses_gpu_and_quantize_refuses_onnx(exported, tmp_path):
    from adkit.deploy.engines import PaddleEngine
    from adkit.core.errors import UserError
    from adkit.commands.export import export

    with pytest.raises(UserError, match="int8 export"):
        PaddleEngine(str(exported["int8"]), device="gpu", image_size=SIZE)
    with pytest.raises(UserError, match="--to_onnx"):
        export(MODEL, str(exported["ckpt"]), str(tmp_path / "x"), to_onnx=True, quantize="int8")
    assert not (tmp_path / "x").exists()


def test_the_check_compares_decisions_at_each_models_own_threshold():
    """Hand-computed: fp32 separates 2 good from 4 defects; int8 lets one defect (3) fall below
    a good image (4). synthetic_f1 on the int8 scores: flagging {6, 7, 8} gives class-balanced
    F1 2*3 / (2*3 + 0 + 1) = 0.857, the best, so its threshold is halfway down to 4: 5."""
    from adkit.deploy.quantize import compare, describe_check, passes

    labels = np.array([0, 0, 1, 1, 1, 1])
    maps = np.random.default_rng(0).random((6, 1, 4, 4)).astype(np.float32)
    fp32 = (maps, np.array([1.0, 2.0, 5.0, 6.0, 7.0, 8.0]))
    int8 = (maps, np.array([1.0, 4.0, 3.0, 6.0, 7.0, 8.0]))
    check = compare(fp32, int8, labels, "synthetic_f1")
    assert check["threshold_fp32"] == pytest.approx(3.5) and check["threshold_int8"] == pytest.approx(5.0)
    assert check["errors_fp32"] == 0 and check["errors_int8"] == 1
    assert check["decision_agreement"] == pytest.approx(5 / 6)
    assert check["good_score_to_threshold_fp32"] == pytest.approx(1.5 / 3.5)
    assert check["good_score_to_threshold_int8"] == pytest.approx(2.5 / 5.0)
    assert check["auroc_int8"] == pytest.approx(7 / 8)
    assert not passes({**check, "auroc_int8": check["auroc_fp32"]})  # worse decisions alone refuse
    assert passes(compare(fp32, fp32, labels, "synthetic_f1"))
    text = describe_check(check)
    assert "wrong decisions 0 -> 1 of 6" in text and "83% same decisions" in text
    assert "good scores at 0.43 -> 0.50 of their threshold" in text
    # manual and oracle policies cannot be recomputed from these images: synthetic_f1 decides
    assert compare(fp32, int8, labels, "manual:4.5")["decision_policy"] == "synthetic_f1"
    assert compare(fp32, int8, labels, "val_max")["threshold_int8"] == pytest.approx(4.0)
