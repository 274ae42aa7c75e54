#!/usr/bin/env python
r"""Export a trained model to a Paddle static inference graph (and optionally ONNX).

    python export_model.py --model efficientad_s --checkpoint_dir output/efficientad_s/brick \
        --save_dir inference/efficientad_s_brick

The graph takes float32 [N,3,H,W] RGB in [0,1] at the training image size (N dynamic) and returns
(anomaly map [N,1,H,W], image score [N]). Input normalisation, teacher normalisation, map
quantiles, Gaussian blurs, PatchCore's memory bank and PaDiM's Gaussians are all inside the graph.

``--quantize int8`` writes an int8 graph for CPUs (Paddle Inference, oneDNN int8) instead, calibrated
on good training images and kept only if it detects as well as fp32 on the training side
(adkit/deploy/quantize.py); otherwise it refuses with one line and writes nothing.
"""
import os
import shutil
import sys
import tempfile

from adkit.core.errors import UserError, exit_on_user_error
from adkit.core.runtime import cpu_threads_from_argv, framework_stdout_silenced, setup_logging, tune_process


def parse_args(argv):
    from adkit.options.config import HelpFormatter, OneLineParser
    from adkit.evaluate.thresholds import POLICY_HELP
    from adkit.options.registry import model_names

    parser = OneLineParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", required=True, choices=model_names(), help="the trained method")
    parser.add_argument("--checkpoint_dir", required=True, help="<output_dir>/<model>/<cls> of a training run")
    parser.add_argument("--save_dir", required=True, help="folder for inference.json/.pdiparams + deploy_config.json")
    parser.add_argument("--to_onnx", action="store_true",
                        help="also write model.onnx, checked against the Paddle graph "
                             "(needs paddle2onnx and onnxruntime)")
    parser.add_argument("--opset", type=int, default=13, help="ONNX opset for --to_onnx")
    parser.add_argument("--quantize", choices=("int8",), default=None,
                        help="int8: post-training quantisation for CPU (oneDNN int8), calibrated on "
                             "good training images and kept only if the image AUROC of validation "
                             "good images vs synthetic defects drops by < 0.5 point (else refused)")
    parser.add_argument("--calibration_dir", default=None,
                        help="with --quantize: good images to calibrate on (default: the training "
                             "images recorded in the checkpoint's calibration.json)")
    parser.add_argument("--cpu_threads", type=int, default=2, help="CPU threads while exporting")
    parser.add_argument("--threshold_policy", default=None,
                        help=f"threshold stored with the export: {POLICY_HELP} "
                             "(default: the policy chosen at training)")
    parser.add_argument("--verbose", action="store_true",
                        help="show Paddle's own C++ messages (normally silenced)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="store this threshold instead (same as --threshold_policy manual:VALUE)")
    return parser.parse_args(argv)


def export(model, checkpoint_dir, save_dir, to_onnx=False, opset=13, threshold_policy=None,
           threshold=None, quantize=None, calibration_dir=None, cpu_threads=2):
    import paddle

    from adkit import __version__
    from adkit.core.image_io import image_hw
    from adkit.core.tiling import Tiling
    from adkit.core.static_graph import save_inference_graph
    from adkit.deploy.exported import DEPLOY_CONFIG, INPUT_DESCRIPTION
    from adkit.core.io_utils import default_dir_mode, write_json
    from adkit.deploy.serving.repository import VERSION_FILE
    from adkit.evaluate.calibration import (CALIBRATION_FILE, EVAL_METRICS_FILE, read_calibration,
                                            resolve_threshold)
    from adkit.options.registry import load_trained

    if quantize not in (None, "int8"):
        raise UserError(f"--quantize {quantize}: only int8 is supported")
    if quantize and to_onnx:
        raise UserError("--quantize int8 and --to_onnx: the int8 graph is for Paddle Inference; "
                        "export the ONNX model in a separate fp32 export")
    if calibration_dir and not quantize:
        raise UserError("--calibration_dir needs --quantize int8")
    cfg, method = load_trained(checkpoint_dir, runtime_cfg={"device": "cpu"}, expected_model=model)
    tiling = Tiling.from_config(cfg)
    net = method.inference_net()
    size = image_hw(cfg["image_size"])
    chosen = resolve_threshold(checkpoint_dir, threshold_policy, threshold)
    calibration = read_calibration(checkpoint_dir)

    # Write into a sibling temp folder and swap it in: an existing export survives any failure.
    parent = os.path.dirname(os.path.abspath(save_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=".export_")
    os.chmod(staging, default_dir_mode())  # the user's umask, not mkdtemp's 0700
    try:
        save_inference_graph(net, size, staging)
        quantization = None
        if quantize:
            quantization, calibration = quantize_into(staging, checkpoint_dir, size, tiling, cfg,
                                                      calibration, calibration_dir, cpu_threads)
            # the int8 model's own training-side scores: its threshold, df_training.csv
            chosen = resolve_threshold(staging, threshold_policy, threshold)
        write_json(os.path.join(staging, DEPLOY_CONFIG), {
            "model": model, "image_size": list(size), **(tiling.as_config() if tiling else {}),
            "precision": quantize or "fp32",
            "quantization": quantization, "threshold": chosen.value,
            "threshold_policy": chosen.policy, "threshold_source": chosen.source,
            "map_range": calibration["map_range"] if calibration else None,
            "input": INPUT_DESCRIPTION,
            "outputs": ["anomaly map float32 [N,1,H,W]", "image score float32 [N]"],
            "checkpoint_dir": os.path.abspath(checkpoint_dir), "project_version": __version__,
            "paddle_version": paddle.__version__})
        for name in () if quantize else (CALIBRATION_FILE, EVAL_METRICS_FILE):  # thresholds, df_training.csv
            if os.path.isfile(os.path.join(checkpoint_dir, name)):
                shutil.copy(os.path.join(checkpoint_dir, name), os.path.join(staging, name))
        if os.path.isfile(os.path.join(checkpoint_dir, VERSION_FILE)):  # the version number of an update
            shutil.copy(os.path.join(checkpoint_dir, VERSION_FILE), os.path.join(staging, VERSION_FILE))
        if to_onnx:
            export_onnx(staging, opset)
        _swap_in(staging, save_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return save_dir


def quantize_into(staging, checkpoint_dir, size, tiling, cfg, calibration, calibration_dir, cpu_threads):
    """int8 graph in ``staging`` (or a one-line refusal) and its calibration.json written there;
    returns (what deploy_config.json records, the int8 calibration)."""
    import logging

    from adkit.evaluate.calibration import calibrate, write_calibration
    from adkit.deploy.quantize import GoodImages, describe_check, quantize_export

    log = logging.getLogger("adkit")
    info, engine = quantize_export(checkpoint_dir, staging, size, calibration, calibration_dir,
                                   cpu_threads, log, tiling)
    train = [e["path"] for e in calibration.get("train", [])]
    train = train if all(os.path.isfile(p) for p in train) else []
    val = [e["path"] for e in calibration["val"]]
    photo_size = None if tiling else size
    recalibrated = calibrate(engine.run, GoodImages(train, photo_size), GoodImages(val, photo_size),
                             int(cfg.get("eval_batch_size") or 4), calibration["seed"], calibration["policy"],
                             tiling)
    write_calibration(staging, recalibrated)
    log.info("int8 (%s) kept: %s; threshold recalibrated on the int8 scores", info["level"],
             describe_check(info["check"]))
    return info, recalibrated


def export_onnx(folder, opset):
    from adkit.core.compat import import_paddle2onnx
    from adkit.deploy.exported import model_files

    paddle2onnx = import_paddle2onnx()
    graph, params = model_files(folder)
    # enable_optimize=False: paddle2onnx's optimiser may try to pip-install packages at run time.
    # Its C++ core prints "[I] ..." / "[INFO] ONNX model saved" lines on stdout: results only there.
    with framework_stdout_silenced():
        paddle2onnx.export(graph, params, os.path.join(folder, "model.onnx"), opset_version=opset,
                           enable_onnx_checker=True, enable_optimize=False)
    check_onnx_matches_paddle(folder)


def check_onnx_matches_paddle(folder, tolerance=1e-4):
    """Run model.onnx and the Paddle graph (plain CPU kernels) on one seeded batch: a converter
    bug must fail the export, not ship wrong maps. ``tolerance`` is relative to the largest
    |output| (tests/test_deploy.py measured < 1e-5 for float32 reordering)."""
    import numpy as np

    from adkit.core.compat import import_paddle2onnx
    from adkit.core.image_io import image_hw
    from adkit.deploy.exported import read_deploy_config
    from adkit.deploy.engines import OnnxEngine, PaddleEngine

    height, width = image_hw(read_deploy_config(folder)["image_size"])
    batch = np.random.default_rng(0).random((2, 3, height, width), dtype=np.float32)
    expected = PaddleEngine(folder, enable_mkldnn=False, image_size=(height, width)).run(batch)
    actual = OnnxEngine(folder).run(batch)
    for name, want, got in zip(("map", "score"), expected, actual):
        diff = float(np.max(np.abs(want - got)))
        if not diff <= tolerance * float(np.max(np.abs(want))):  # also catches NaN
            raise UserError(f"--to_onnx: ONNX Runtime's {name} differs from the Paddle graph's by "
                            f"{diff:.3g}: paddle2onnx {import_paddle2onnx().__version__} converted this model "
                            "wrongly; nothing was written (deploy the Paddle graph instead)")


def _swap_in(staging, save_dir):
    old = None
    if os.path.exists(save_dir):
        old = save_dir.rstrip("/\\") + ".old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(save_dir, old)
    os.replace(staging, save_dir)
    if old:
        shutil.rmtree(old, ignore_errors=True)


@exit_on_user_error
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    tune_process(cpu_threads_from_argv(argv), verbose="--verbose" in argv)
    args = parse_args(argv)
    import logging

    setup_logging()
    out = export(args.model, args.checkpoint_dir, args.save_dir, args.to_onnx, args.opset,
                 args.threshold_policy, args.threshold, args.quantize, args.calibration_dir,
                 args.cpu_threads)
    logging.getLogger("adkit").info("exported %s to %s", args.model, out)


if __name__ == "__main__":
    main()
