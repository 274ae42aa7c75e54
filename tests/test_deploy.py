"""Static-graph deployment: export_model.py -> infer.py (Paddle Inference with oneDNN on and off,
ONNX Runtime) against the dygraph network the graph was exported from; file lookup; CLI errors."""
import argparse
import re
import csv
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
from scipy import ndimage
import paddle
import pytest
import tifffile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 64
CLS = "brick"
MODELS = ("rd4ad", "efficientad_s", "efficientad_m", "stfpm", "patchcore", "padim")
PADDLE_2 = paddle.__version__.startswith("2.")
GRAPH_FILE = "inference.pdmodel" if PADDLE_2 else "inference.json"  # what paddle.jit.save writes
# Each model trains for 2 steps only: the graph must reproduce whatever weights it holds.
TRAIN_ARGS = {
    # efficientnet_lite0 pads explicitly (TF "SAME"), which the ONNX conversion once got wrong
    "rd4ad": ["--backbone", "efficientnet_lite0", "--backbone_weights", "none", "--batch_size", "2"],
    # EfficientAD needs validation images (for its quantiles); a random teacher is enough here
    "efficientad_s": ["--val_ratio", "0.2", "--teacher_weights", "none"],
    "efficientad_m": ["--val_ratio", "0.2", "--teacher_weights", "none"],
    "stfpm": ["--backbone_weights", "none", "--batch_size", "2"],
    # float16 banks/statistics: the graph must cast them back exactly as dygraph does
    "patchcore": ["--backbone_weights", "none", "--coreset_ratio", "0.5", "--bank_dtype", "float16"],
    "padim": ["--backbone_weights", "none", "--stats_dtype", "float16"],
}
# Tolerance, as a fraction of the largest |value| of the dygraph map, for maps and scores.
# oneDNN and ONNX Runtime reorder float32 sums (blocked/fused convolutions, other GEMM kernels),
# so outputs drift by a few float32 ulps times the number of accumulated terms; EfficientAD's
# quantile normalisation then scales that drift with the map. Measured max |engine - dygraph| /
# max|dygraph map| on these 2-step models (64 px, 19 images, batches of 2-4; worst of two runs):
#   Paddle Inference oneDNN on : rd4ad 5.0e-7, efficientad_s 7.3e-7, efficientad_m 3.4e-6
#   Paddle Inference oneDNN off: rd4ad 0 (bit-identical), efficientad_s 4.7e-7, efficientad_m 2.5e-6
#   ONNX Runtime               : rd4ad 4.1e-7, efficientad_s 6.8e-7, efficientad_m 7.4e-6
# 1e-4 leaves a margin of more than 13x; a real graph difference (a missing normalisation, a
# wrong quantile, a skipped blur) moves maps by percents. Element-wise relative error is not
# used: EfficientAD maps cross zero, where it means nothing.
TOLERANCE = 1e-4
CSV_ROUNDING = 1e-6  # df_test.csv keeps float32 text
# (backend, --enable_mkldnn, --batch_size, --save_format). Batches of 4 and 3 over 19 images
# end with a partial batch, so each predictor also sees its input shape change.
ENGINE_RUNS = {
    "paddle-onednn": ("paddle", "true", 4, "tiff"),
    "paddle-plain": ("paddle", "false", 3, "npy"),
    "onnxruntime": ("onnxruntime", "false", 2, "npy"),
}


def cli(script, *args):
    # Without OMP_NUM_THREADS `import paddle` prints nothing; the scripts set threads themselves.
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)], check=False,
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def folder_digest(folder):
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
            for name in sorted(os.listdir(folder))}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """All brick test images in one flat folder, plus a grayscale gravel image and a 200x150
    one, so maps must come back at each image's own size."""
    folder = tmp_path_factory.mktemp("images")
    for path in glob.glob(os.path.join(ROOT, "sample_data", CLS, "test", "*", "*.png")):
        defect = os.path.basename(os.path.dirname(path))
        shutil.copy(path, folder / f"{defect}_{os.path.basename(path)}")
    shutil.copy(os.path.join(ROOT, "sample_data", "gravel", "test", "good", "000.png"),
                folder / "gravel_gray.png")
    wide = cv2.resize(cv2.imread(str(folder / "good_000.png")), (200, 150), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(folder / "wide_brick.png"), wide)
    return sorted(str(p) for p in folder.iterdir())


def model_input(path):
    """The documented graph input, built with OpenCV alone: RGB, area-shrunk to SIZE, /255, CHW."""
    image = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    if image.shape[:2] != (SIZE, SIZE):
        image = cv2.resize(image, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    return image.transpose(2, 0, 1).astype(np.float32) / 255.0


def dygraph_outputs(ckpt_dir, paths):
    """The reference: models.load_trained + inference_net -> (maps [N,S,S], scores [N])."""
    import paddle

    from adkit.options.registry import load_trained

    _, method = load_trained(str(ckpt_dir))
    batch = paddle.to_tensor(np.stack([model_input(p) for p in paths]))
    with paddle.no_grad():
        amap, score = method.inference_net()(batch)
    return amap.numpy()[:, 0], score.numpy().reshape(-1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, images):
    """model -> its 2-step training run, evaluated and exported with ONNX (built on first use)."""
    from adkit.pipelines.evaluate import evaluate
    from adkit.pipelines.train import train
    from adkit.options.config import resolve_config
    from adkit.commands.export import export

    cache = {}

    def get(model):
        if model not in cache:
            out = tmp_path_factory.mktemp(model)
            base = ["--model", model, "--data_dir", os.path.join(ROOT, "sample_data"), "--cls", CLS,
                    "--output_dir", str(out), "--image_size", str(SIZE), "--steps", "2"]
            train(resolve_config(base + ["--mode", "train"] + TRAIN_ARGS[model]), CLS)
            evaluate(resolve_config(base + ["--mode", "eval"]), CLS)
            ckpt_dir, save_dir = out / model / CLS, out / "export"
            export(model, str(ckpt_dir), str(save_dir), to_onnx=True)
            maps, scores = dygraph_outputs(ckpt_dir, images)
            cache[model] = {"model": model, "ckpt_dir": ckpt_dir, "save_dir": save_dir,
                            "maps": maps, "scores": scores}
        return cache[model]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_export_writes_graph_onnx_and_deploy_config(trained, model):
    run = trained(model)
    assert sorted(os.listdir(run["save_dir"])) == sorted([
        "calibration.json", "deploy_config.json", "eval_metrics.json", GRAPH_FILE,
        "inference.pdiparams", "model.onnx"])
    deploy = read_json(run["save_dir"] / "deploy_config.json")
    assert deploy["model"] == model
    assert deploy["image_size"] == [SIZE, SIZE]
    # The deployed threshold is the one training chose on the training side, never eval's
    # test-set F1-max, and it says where it came from.
    calibration = read_json(run["ckpt_dir"] / "calibration.json")
    assert deploy["threshold"] == calibration["threshold"]["value"]
    assert deploy["threshold_policy"] == calibration["policy"] == "synthetic_f1"
    assert "synthetic defects" in deploy["threshold_source"]
    # No model graph holds a pad op (paddle2onnx 2.1 misconverts Paddle 3.3's pad value):
    # padding lives in the convs and in the resize matrices.
    import onnx

    assert "Pad" not in {node.op_type for node in onnx.load(str(run["save_dir"] / "model.onnx")).graph.node}


@pytest.mark.slow
def test_export_refuses_an_onnx_model_that_disagrees_with_paddle(trained, tmp_path):
    import onnx
    from onnx import numpy_helper

    from adkit.core.errors import UserError
    from adkit.commands.export import check_onnx_matches_paddle

    folder = tmp_path / "export"
    shutil.copytree(trained("efficientad_s")["save_dir"], folder)
    check_onnx_matches_paddle(str(folder))  # the real export passes
    model = onnx.load(str(folder / "model.onnx"))
    # a converter bug in miniature: the first conv's weights off by 3% (paddle2onnx 2.1 once wrote
    # a pad value of 0.027 instead of 0)
    conv = next(node for node in model.graph.node if node.op_type == "Conv")
    # the weights are an initializer (paddle2onnx 2.x) or a Constant node's value (1.x, Paddle 2.6)
    weight = next((t for t in model.graph.initializer if t.name == conv.input[1]), None)
    if weight is None:
        constant = next(n for n in model.graph.node if n.op_type == "Constant" and conv.input[1] in n.output)
        weight = next(a for a in constant.attribute if a.name == "value").t
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * np.float32(1.03), weight.name))
    onnx.save(model, str(folder / "model.onnx"))
    with pytest.raises(UserError, match="differs from the Paddle graph"):
        check_onnx_matches_paddle(str(folder))


@pytest.mark.slow
def test_export_cli_with_onnx_keeps_stdout_for_results(trained, tmp_path):
    """paddle2onnx's C++ core prints "[I] ..." / "[INFO] ONNX model saved" lines on stdout;
    export_model.py prints no results, so its stdout stays empty (logs go to stderr)."""
    run = trained("rd4ad")
    proc = cli("export_model.py", "--model", "rd4ad", "--checkpoint_dir", run["ckpt_dir"],
               "--save_dir", tmp_path / "export", "--to_onnx")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == ""
    assert (tmp_path / "export" / "model.onnx").is_file()
    assert "exported rd4ad" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("engine", sorted(ENGINE_RUNS))
@pytest.mark.parametrize("model", MODELS)
def test_infer_cli_outputs_match_dygraph(trained, images, tmp_path, model, engine):
    run = trained(model)
    backend, mkldnn, batch_size, save_format = ENGINE_RUNS[engine]
    proc = cli("infer.py", "--model_dir", run["save_dir"], "--img_path", os.path.dirname(images[0]),
               "--output_dir", tmp_path, "--backend", backend, "--enable_mkldnn", mkldnn,
               "--batch_size", batch_size, "--save_format", save_format, "--cpu_threads", 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    atol = TOLERANCE * float(np.abs(run["maps"]).max())

    rows = read_csv(tmp_path / "df_test.csv")
    assert [r["path"] for r in rows] == images
    # stdout is the results and nothing else (Paddle's C++ notes, e.g. oneDNN's
    # "ReduceMeanCheckIfOneDNNSupport" for EfficientAD, are silenced)
    assert proc.stdout.splitlines() == [f"{r['score']}\t{r['prediction']}\t{r['path']}" for r in rows]
    scores = np.array([float(r["score"]) for r in rows])
    np.testing.assert_allclose(scores, run["scores"], rtol=0, atol=atol + CSV_ROUNDING)
    # An image whose score sits within the tolerance of the threshold may flip; every other
    # label must be score >= threshold.
    threshold = read_json(run["save_dir"] / "deploy_config.json")["threshold"]
    clear = np.abs(run["scores"] - threshold) > atol + CSV_ROUNDING
    expected = np.where(run["scores"] >= threshold, "defect", "good")
    assert [r["prediction"] for r, keep in zip(rows, clear) if keep] == list(expected[clear])

    regions = read_csv(tmp_path / "regions.csv")
    for path, ref_map in zip(images, run["maps"]):
        stem = os.path.splitext(os.path.basename(path))[0]
        h, w = cv2.imread(path, cv2.IMREAD_UNCHANGED).shape[:2]
        assert cv2.imread(str(tmp_path / f"{stem}_overlay.png")) is not None
        full_map = np.load(tmp_path / f"{stem}.npy") if save_format == "npy" else \
            tifffile.imread(tmp_path / f"{stem}.tiff")
        assert full_map.shape == (h, w) and full_map.dtype == np.float32
        # Bilinear resizing is a convex combination: it cannot enlarge the difference.
        expected_map = cv2.resize(ref_map, (w, h), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(full_map, expected_map, rtol=0, atol=atol)
        # The binary mask is the map at the threshold, at the image's own size.
        mask = cv2.imread(str(tmp_path / f"{stem}_mask.png"), cv2.IMREAD_UNCHANGED)
        clear_pixels = np.abs(full_map - threshold) > atol
        np.testing.assert_array_equal((mask > 0)[clear_pixels], (full_map >= threshold)[clear_pixels])
        other = "npy" if save_format == "tiff" else "tiff"
        assert not (tmp_path / f"{stem}.{other}").exists()
        # regions.csv: the written map's 8-connected parts at the threshold (scipy, not OpenCV)
        mine = [r for r in regions if r["path"] == path]
        labels, count = ndimage.label(full_map >= threshold, structure=np.ones((3, 3)))
        assert len(mine) == count and [int(r["region"]) for r in mine] == list(range(1, count + 1))
        want = {}
        for k, box in enumerate(ndimage.find_objects(labels), 1):
            values = full_map[labels == k]
            want[(box[1].start, box[0].start, box[1].stop - box[1].start, box[0].stop - box[0].start,
                  values.size)] = (float(values.max()), float(values.astype(np.float64).mean()))
        for r in mine:
            peak, mean = want.pop(tuple(int(r[k]) for k in ("x", "y", "width", "height", "area")))
            assert float(r["max"]) == pytest.approx(peak, rel=1e-6)
            assert float(r["mean"]) == pytest.approx(mean, rel=1e-6)
        assert [float(r["max"]) for r in mine] == sorted((float(r["max"]) for r in mine), reverse=True)
    assert sum(1 for r in regions) > 0  # some image of the brick test set has a region


@pytest.mark.slow
def test_benchmark_reports_the_three_stages_and_png_writes_overlays_only(trained, images, tmp_path):
    proc = cli("infer.py", "--model_dir", trained("efficientad_s")["save_dir"], "--img_path",
               images[0], "--output_dir", tmp_path, "--benchmark", "true", "--warmup", 0,
               "--save_format", "png")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = [line for line in proc.stderr.splitlines() if line.startswith("benchmark ")]
    assert len(report) == 1
    # stdout: the one result line of the one image, no timing among the results
    assert len(proc.stdout.splitlines()) == 1 and proc.stdout.split("\t")[2].strip() == images[0]
    for key in ("preprocess_time", "inference_time", "postprocess_time"):
        assert f"{key}: " in report[0]
    stem = os.path.splitext(os.path.basename(images[0]))[0]
    assert sorted(os.listdir(tmp_path)) == sorted(["df_test.csv", "df_training.csv", "regions.csv", "run.json",
                                                   stem + "_mask.png", stem + "_overlay.png"])


def write_files(folder, names):
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"x")
    return str(folder)


def test_model_files_finds_paddle3_and_paddle26_graphs(tmp_path):
    from adkit.deploy.exported import model_files

    folder = write_files(tmp_path / "paddle26", ["inference.pdmodel", "inference.pdiparams"])
    assert model_files(folder) == (os.path.join(folder, "inference.pdmodel"),
                                   os.path.join(folder, "inference.pdiparams"))
    folder = write_files(tmp_path / "paddle3", ["inference.json", "inference.pdiparams"])
    if not PADDLE_2:
        assert model_files(folder)[0] == os.path.join(folder, "inference.json")
        return
    # Paddle 2.6 cannot read a PIR graph: one line naming the Paddle that wrote the folder
    from adkit.core.errors import UserError

    with open(os.path.join(folder, "deploy_config.json"), "w") as f:
        json.dump({"model": "rd4ad", "image_size": 64, "paddle_version": "3.3.1"}, f)
    with pytest.raises(UserError) as err:
        model_files(folder)
    message = str(err.value)
    assert "\n" not in message and folder in message
    assert "Paddle 3.3.1" in message and paddle.__version__ in message and "paddlepaddle>=3" in message


@pytest.mark.parametrize("names", [[], ["inference.pdiparams"], ["inference.pdmodel"],
                                   ["inference.json", "model.onnx"]])
def test_model_files_without_a_graph_and_params_pair_is_a_user_error(tmp_path, names):
    from adkit.deploy.exported import model_files
    from adkit.core.errors import UserError

    folder = write_files(tmp_path / "export", names)
    with pytest.raises(UserError) as err:
        model_files(folder)
    message = str(err.value)
    assert folder in message and "inference.json" in message and "inference.pdmodel" in message
    with pytest.raises(UserError, match="not found"):
        model_files(str(tmp_path / "missing"))


@pytest.mark.parametrize("text, value", [("TRUE", True), ("False", False), ("1", True), ("0", False),
                                         (" true ", True), ("off", False)])
def test_str2bool_accepts_common_spellings(text, value):
    from adkit.commands.infer import str2bool

    assert str2bool(text) is value


def test_str2bool_rejects_anything_else():
    from adkit.commands.infer import str2bool

    with pytest.raises(argparse.ArgumentTypeError, match="maybe"):
        str2bool("maybe")


def infer_error_cases(save_dir, images, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(images[0], broken / "a.png")
    (broken / "notes.png").write_text("not an image")
    out = ["--output_dir", tmp_path / "out"]
    base = ["--model_dir", save_dir, "--img_path", images[0]] + out
    return {
        "bad model_dir": (["--model_dir", tmp_path / "nowhere", "--img_path", images[0]] + out, "nowhere"),
        "non-image file": (["--model_dir", save_dir, "--img_path", broken] + out, "notes.png"),
        "batch larger than images": (base + ["--batch_size", 2], "--batch_size"),
        "fp16 on cpu": (base + ["--precision", "fp16"], "--precision"),
        "tensorrt on cpu": (base + ["--use_tensorrt", "true"], "--use_tensorrt"),
        "not a boolean": (base + ["--enable_mkldnn", "maybe"], "maybe"),
        "fp16 with onnxruntime": (base + ["--backend", "onnxruntime", "--precision", "fp16"],
                                  "--precision"),
    }


@pytest.mark.slow
@pytest.mark.parametrize("case", ["bad model_dir", "non-image file", "batch larger than images",
                                  "fp16 on cpu", "tensorrt on cpu", "not a boolean",
                                  "fp16 with onnxruntime"])
def test_infer_user_errors_exit_2_with_one_line(trained, images, tmp_path, case):
    args, named = infer_error_cases(trained("efficientad_s")["save_dir"], images, tmp_path)[case]
    proc = cli("infer.py", *args)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert named in lines[0]


@pytest.mark.slow
def test_failed_export_leaves_the_existing_export_intact(trained, tmp_path, monkeypatch):
    from adkit.commands import export as export_model
    from adkit.core.errors import UserError

    run = trained("efficientad_s")
    save_dir = tmp_path / "deployed"
    shutil.copytree(run["save_dir"], save_dir)
    before = folder_digest(save_dir)

    with pytest.raises(UserError):  # no training run in that folder
        export_model.export("efficientad_s", str(tmp_path / "no_checkpoint"), str(save_dir))

    def onnx_fails(folder, opset):  # fail after the graph is written into the staging folder
        raise RuntimeError("simulated paddle2onnx failure")

    monkeypatch.setattr(export_model, "export_onnx", onnx_fails)
    with pytest.raises(RuntimeError, match="simulated"):
        export_model.export("efficientad_s", str(run["ckpt_dir"]), str(save_dir), to_onnx=True)
    assert folder_digest(save_dir) == before
    assert sorted(os.listdir(tmp_path)) == ["deployed"]  # no staging or backup folder left over


@pytest.mark.slow
def test_successful_export_replaces_the_whole_folder(trained, tmp_path):
    from adkit.commands.export import export

    run = trained("efficientad_s")
    save_dir = tmp_path / "deployed"
    shutil.copytree(run["save_dir"], save_dir)
    (save_dir / "stale.txt").write_text("from an older export")
    export("efficientad_s", str(run["ckpt_dir"]), str(save_dir))
    assert sorted(os.listdir(save_dir)) == sorted(["calibration.json", "deploy_config.json", "eval_metrics.json",
                                                   GRAPH_FILE, "inference.pdiparams"])
    assert sorted(os.listdir(tmp_path)) == ["deployed"]
    from adkit.core.io_utils import default_dir_mode

    assert os.stat(save_dir).st_mode & 0o777 == default_dir_mode()  # not mkdtemp's 0700


def test_export_cli_bad_checkpoint_is_one_line_error(tmp_path):
    proc = cli("export_model.py", "--model", "rd4ad", "--checkpoint_dir", tmp_path / "none",
               "--save_dir", tmp_path / "out")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "none" in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["paddle", "onnxruntime", "checkpoint"])
def test_predictor_api_on_export_and_checkpoint_folders(trained, images, backend):
    from adkit import Predictor

    run = trained("rd4ad")
    folder = run["ckpt_dir"] if backend == "checkpoint" else run["save_dir"]
    predictor = Predictor(str(folder), backend="paddle" if backend == "checkpoint" else backend)
    deploy = read_json(run["save_dir"] / "deploy_config.json")
    assert predictor.threshold.value == deploy["threshold"]
    atol = TOLERANCE * float(np.abs(run["maps"]).max())
    for index in (0, len(images) - 1):  # a brick image and the 200x150 one
        path = images[index]
        by_path = predictor.predict(path)
        array = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        by_array = predictor.predict(array)
        h, w = array.shape[:2]
        expected = cv2.resize(run["maps"][index], (w, h), interpolation=cv2.INTER_LINEAR)
        for result in (by_path, by_array):
            assert result.map.shape == (h, w)
            np.testing.assert_allclose(result.map, expected, rtol=0, atol=atol)
            assert result.score == pytest.approx(run["scores"][index], abs=atol)
            assert result.label == ("defect" if result.score >= predictor.threshold.value else "good")


@pytest.mark.slow
def test_infer_walks_a_dataset_tree_and_a_second_run_replaces_the_first(trained, tmp_path):
    # The README's deployment example: --img_path is a whole test tree.
    save_dir = trained("rd4ad")["save_dir"]
    tree = os.path.join(ROOT, "sample_data", CLS, "test")
    out = tmp_path / "out"
    proc = cli("infer.py", "--model_dir", save_dir, "--img_path", tree, "--output_dir", out,
               "--save_format", "png")
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = sorted(os.path.relpath(os.path.join(d, n), tree) for d, _, names in os.walk(tree) for n in names)
    rows = read_csv(out / "df_test.csv")
    assert [os.path.relpath(r["path"], tree) for r in rows] == expected
    for row, rel in zip(rows, expected):
        assert row["overlay"] == rel.replace(".png", "_overlay.png") and (out / row["overlay"]).is_file()
        kind = os.path.dirname(rel)
        assert (row["defect_type"], row["ground_truth"]) == (kind, "good" if kind == "good" else "defect")
    # stdout holds exactly one parseable result line per image
    lines = proc.stdout.strip().splitlines()
    assert [line.split("\t")[2] for line in lines] == [r["path"] for r in rows]
    assert [line.split("\t")[:2] for line in lines] == [[r["score"], r["prediction"]] for r in rows]
    training = read_csv(out / "df_training.csv")
    assert {r["split"] for r in training} == {"train", "val", "synthetic"}

    one = os.path.join(tree, "good", "000.png")
    assert cli("infer.py", "--model_dir", save_dir, "--img_path", one, "--output_dir", out).returncode == 0
    assert sorted(os.listdir(out)) == ["000.npy", "000_mask.png", "000_overlay.png", "df_test.csv",
                                       "df_training.csv", "regions.csv", "run.json"]
    assert len(read_csv(out / "df_test.csv")) == 1


@pytest.mark.slow
def test_infer_does_not_read_its_own_outputs_back(trained, tmp_path):
    """--output_dir inside --img_path: the second run scores the same images as the first,
    not the first run's _overlay.png / _mask.png files (a run folder holds run.json)."""
    save_dir = trained("rd4ad")["save_dir"]
    photos = tmp_path / "photos"
    shutil.copytree(os.path.join(ROOT, "sample_data", CLS, "test", "scratch"), photos / "line1")
    (photos / ".thumbnails").mkdir()
    shutil.copy(photos / "line1" / "000.png", photos / ".thumbnails" / "000.png")
    for run in range(2):
        proc = cli("infer.py", "--model_dir", save_dir, "--img_path", photos,
                   "--output_dir", photos / "results", "--save_format", "png")
        assert proc.returncode == 0, proc.stderr[-3000:]
        scored = [line.split("\t")[2] for line in proc.stdout.strip().splitlines()]
        assert scored == [str(photos / "line1" / f"00{i}.png") for i in range(3)], run
    assert (photos / "results" / "line1" / "000_overlay.png").is_file()


@pytest.mark.slow
def test_a_truncated_image_gives_one_line_or_is_skipped_when_asked(trained, images, tmp_path):
    save_dir = trained("rd4ad")["save_dir"]
    folder = tmp_path / "batch"
    folder.mkdir()
    shutil.copy(images[0], folder / "a.png")
    whole = open(images[1], "rb").read()
    # cut inside the pixel data: libpng would print "PNG input buffer is incomplete" first
    (folder / "b.png").write_bytes(whole[:len(whole) * 4 // 5])
    proc = cli("infer.py", "--model_dir", save_dir, "--img_path", folder, "--output_dir", tmp_path / "out")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {folder / 'b.png'}: cannot decode image "
                                                "(truncated PNG: the file ends before its IEND chunk)"]
    assert not (tmp_path / "out").exists()

    proc = cli("infer.py", "--model_dir", save_dir, "--img_path", folder, "--output_dir",
               tmp_path / "out", "--skip_bad_images")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_csv(tmp_path / "out" / "df_test.csv")
    assert [r["status"] for r in rows] == ["ok", "skipped: cannot decode image (truncated PNG: the file "
                                                 "ends before its IEND chunk)"]
    assert "skipped" in proc.stderr and "b.png" in proc.stderr


def test_infer_help_explains_every_option_with_its_default():
    proc = cli("infer.py", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "or a training folder (<output_dir>/<model>/<cls>: its checkpoint runs in dygraph" in text
    for option, default in (("--batch_size", "1"), ("--device", "cpu"), ("--gpu_id", "0"),
                            ("--cpu_threads", "2"), ("--save_format", "npy"), ("--warmup", "2")):
        assert re.search(re.escape(option) + r" \S+ [^()]*\(default: " + re.escape(default) + r"\)", text), option
    assert "--threshold_policy" in text and "--skip_bad_images" in text
    assert "(default: None)" not in text
    assert "--img_path sample_data/brick/test \\ --device cpu" in text  # the usage example as written
