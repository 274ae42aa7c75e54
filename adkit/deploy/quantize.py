"""int8 post-training quantisation for CPU deployment (``export_model.py --quantize int8``).

What works on Paddle 3.3.1 (measured, see doc/deployment.md, "Quantised deployment"):

- Paddle Inference runs oneDNN int8 only on the old program IR: its int8 passes
  (``quant_dequant_onednn_pass``, ``cpu_quantize_placement_pass``, ``cpu_quantize_pass``, ...)
  exist for ``.pdmodel`` programs with ``Config.enable_new_ir(False)``; the PIR pipeline only
  deletes quantize/dequantize pairs (``delete_quant_dequant_linear_op_pass``) and runs fp32, and
  a PIR graph written by ``paddle.quantization.PTQ`` (dygraph) does not even load ("Tensor holds
  no memory" in constant folding; its ``LinearQuanter`` also cannot trace a dynamic batch).
- So the int8 model is made with Paddle's static ``PostTrainingQuantization`` on an old-IR
  export of the same inference net, in a child process started with ``FLAGS_enable_pir_api=0``.
  Paddle 3.3 dropped the old-IR branch of some Python ops (``sum``, ``matmul``, ``multiply``,
  ``sqrt``, ... raise "must be Value"); ``legacy_static_ops`` gives them back for that trace
  (the old ops ``reduce_sum``, ``matmul_v2``, ``elementwise_mul``, ...), in that process only.

The int8 model is kept only if it detects as well as fp32 on the training side: image AUROC of
the validation good images against the synthetic defects made from them (the ones calibration
used; nothing from the test set) may drop by less than ``MAX_AUROC_DROP``. The whole graph is
tried first, then the convolutions only; otherwise export refuses.
"""
import functools
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from adkit.core.errors import UserError
from adkit.core.io_utils import PACKAGE_PARENT

MAX_AUROC_DROP = 0.005           # 0.5 AUROC point: the bar an int8 export must pass
MAX_CALIBRATION_IMAGES = 64      # good training images the quantisation scales are measured on
CALIBRATION_BATCH = 4
# What is quantised at each level, tried in this order. "graph": every op Paddle's PTQ
# quantises here (convolutions and the matmuls: resize/blur matrices, PatchCore's distances to
# the bank, PaDiM's Mahalanobis products); "backbone": the convolutions only.
LEVELS = {
    "graph": ("conv2d", "depthwise_conv2d", "conv2d_transpose", "matmul_v2", "matmul", "mul"),
    "backbone": ("conv2d", "depthwise_conv2d", "conv2d_transpose"),
}
# The op types oneDNN may then run in int8 (Config.enable_mkldnn_int8(ops); after its fusions).
# Left empty, oneDNN also quantises ops whose scales it only propagates (matmuls, adds): on
# PatchCore that gave a flat map. conv2d_transpose is not in oneDNN's int8 list: it stays fp32.
ONEDNN_INT8_OPS = {
    "graph": ("conv2d", "depthwise_conv2d", "fused_conv2d", "matmul_v2", "matmul", "fused_matmul", "fc"),
    "backbone": ("conv2d", "depthwise_conv2d", "fused_conv2d"),
}
PTQ_ALGO = "abs_max"  # activation ranges: the maximum over the calibration images (no clipping:
#                       a defect's activations lie beyond the good images', clipping them hides it)


# ------------------------------------------------------------------------- the export side

class GoodImages:
    """Good images at the model size (``size``), or at their own size (``size`` None: a tiled
    model's photos, read on each use): ``paths``, ``len``, ``[i]`` (float32 CHW), ``load_uint8``,
    ``photo_hw`` (what adkit.evaluate.calibration.calibrate and adkit.core.tiling.TileSet read)."""

    def __init__(self, paths, size):
        self.paths, self.size, self._cache, self._hw = list(paths), size, {}, {}

    def __len__(self):
        return len(self.paths)

    def load_uint8(self, i):
        from adkit.core.image_io import read_rgb, resize_rgb

        if i in self._cache:
            return self._cache[i]
        image = read_rgb(self.paths[i])
        self._hw[i] = image.shape[:2]
        if self.size is None:
            return image
        self._cache[i] = resize_rgb(image, self.size)
        return self._cache[i]

    def photo_hw(self, i):
        if i not in self._hw:
            self.load_uint8(i)
        return self._hw[i]

    def __getitem__(self, i):
        from adkit.core.image_io import to_chw_float

        return to_chw_float(self.load_uint8(i))


def _existing(paths, what):
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise UserError(f"--quantize int8: {what} {missing[0]} not found ({len(missing)} of {len(paths)} "
                        "missing; calibration.json records the paths training read: run from the "
                        "same working directory, or pass --calibration_dir DIR of good images)")
    return list(paths)


def calibration_paths(calibration, calibration_dir):
    """Good images the int8 scales are measured on: ``--calibration_dir`` or the training images
    calibration.json lists (evenly spread, at most MAX_CALIBRATION_IMAGES)."""
    if calibration_dir:
        from adkit.core.image_io import find_images

        paths = find_images(calibration_dir, "--calibration_dir")
        source = f"--calibration_dir {calibration_dir}"
    else:
        paths = _existing([entry["path"] for entry in calibration.get("train", [])], "training image")
        source = "the training images (calibration.json)"
    if not paths:
        raise UserError("--quantize int8: no training images to calibrate on; pass --calibration_dir DIR")
    if len(paths) > MAX_CALIBRATION_IMAGES:
        keep = np.linspace(0, len(paths) - 1, MAX_CALIBRATION_IMAGES).round().astype(int)
        paths = [paths[i] for i in keep]
    return paths, source


def check_set(calibration, size, tiling=None):
    """(images, labels) of the validation good images and the synthetic defects calibration
    made from them (same seed and count), the accuracy bar's data: a float32 batch
    [N+M,3,H,W] at the model size; for a tiled model (``tiling``) a function giving the photos
    at their own size one at a time, in the same order (see check_outputs)."""
    from adkit.core.image_io import to_chw_float
    from adkit.evaluate.calibration import synthetic_photos
    from adkit.evaluate.synthetic import DEFAULT_KINDS, synthetic_defects

    val = GoodImages(_existing([e["path"] for e in calibration.get("val", [])], "validation image"),
                     None if tiling else size)
    per_image = int(calibration.get("synthetic_per_image") or 0)
    if not len(val) or not per_image:
        raise UserError("--quantize int8: needs validation good images and synthetic defects to "
                        "check the int8 model, but calibration.json has none (train with --val_ratio > 0)")
    made = len(val) * len(DEFAULT_KINDS) * per_image
    if made != len(calibration.get("synthetic", [])):
        raise UserError(f"--quantize int8: calibration.json lists {len(calibration.get('synthetic', []))} "
                        f"synthetic defects, this version makes {made} from its validation images "
                        "(the synthetic kinds changed since training), so the check cannot use "
                        "the same images")
    labels = np.array([0] * len(val) + [1] * made)
    if tiling is not None:
        def photos():
            yield from (val.load_uint8(i) for i in range(len(val)))
            yield from (photo for _, photo in synthetic_photos(val, calibration["seed"], per_image, tiling.tile))

        return photos, labels
    defects = synthetic_defects([val.load_uint8(i) for i in range(len(val))], calibration["seed"],
                                DEFAULT_KINDS, per_image)
    images = [val[i] for i in range(len(val))] + [to_chw_float(image) for image, _, _ in defects]
    return np.stack(images), labels


CHECK_MAP_SIDE = 256  # a tiled model's photo maps are compared at this size (correlations only)


def check_outputs(run_batch, images, tiling, desc, count):
    """(maps [N,h,w], scores [N]) of check_set's ``count`` images through ``run_batch``; a
    tiled model's photos through their tiles (adkit.core.tiling.score_photo), each photo's map
    reduced to CHECK_MAP_SIDE square for the map comparison (the scores are the photo maps' max)."""
    import cv2

    from adkit.core.progress import progress
    from adkit.core.tiling import score_photo
    from adkit.evaluate.evaluation import run_inference

    if tiling is None:
        return run_inference(run_batch, images, CALIBRATION_BATCH, desc)
    maps, scores = [], []
    for photo in progress(images(), total=count, desc=desc, unit="photos"):
        amap, score = score_photo(run_batch, tiling, photo, CALIBRATION_BATCH)
        maps.append(cv2.resize(amap, (CHECK_MAP_SIDE, CHECK_MAP_SIDE), interpolation=cv2.INTER_AREA))
        scores.append(score)
    return np.stack(maps), np.array(scores, np.float32)


def decision_policy(policy):
    """The threshold policy the check applies to each model's own check-set scores: the one
    chosen at training, or synthetic_f1 where that one needs more than these images (manual
    values are fp32 scores, test_f1 needs the test set)."""
    from adkit.evaluate.thresholds import DEFAULT_POLICY, parse_policy

    chosen = parse_policy(policy or DEFAULT_POLICY)
    return chosen if chosen.kind in ("val_max", "val_fpr", "synthetic_f1") else parse_policy("synthetic_f1")


def compare(fp32, int8, labels, policy=None):
    """The accuracy check: image AUROC of each model, their pass/fail decisions at the
    threshold each gets from its own scores (as the int8 export is recalibrated), how far the
    good images' scores moved, and how alike the maps are."""
    from adkit.evaluate.metrics import image_auroc
    from adkit.evaluate.thresholds import compute_threshold

    (maps32, scores32), (maps8, scores8) = fp32, int8
    flat32, flat8 = maps32.reshape(len(maps32), -1), maps8.reshape(len(maps8), -1)
    per_image = [float(np.corrcoef(a, b)[0, 1]) for a, b in zip(flat32, flat8)]
    rule = decision_policy(policy)
    good = labels == 0
    t32 = compute_threshold(rule, scores32[good], scores32[~good]).value
    t8 = compute_threshold(rule, scores8[good], scores8[~good]).value
    flagged32, flagged8 = scores32 >= t32, scores8 >= t8
    # good images' scores relative to their threshold: 0.80 -> 0.95 means they moved 15% of the
    # threshold closer to being flagged, whatever the scores' scale
    return {
        "auroc_fp32": float(image_auroc(labels, scores32)),
        "auroc_int8": float(image_auroc(labels, scores8)),
        "decision_policy": str(rule), "threshold_fp32": float(t32), "threshold_int8": float(t8),
        "errors_fp32": int(np.sum(flagged32 != (labels == 1))),
        "errors_int8": int(np.sum(flagged8 != (labels == 1))),
        "decision_agreement": float(np.mean(flagged32 == flagged8)),
        "good_score_to_threshold_fp32": float(np.median(scores32[good]) / t32) if t32 else None,
        "good_score_to_threshold_int8": float(np.median(scores8[good]) / t8) if t8 else None,
        "n_validation": int((labels == 0).sum()), "n_synthetic": int((labels == 1).sum()),
        "map_correlation_min": float(np.min(per_image)),
        "map_correlation_mean": float(np.mean(per_image)),
        "map_max_abs_diff_rel": float(np.max(np.abs(maps32 - maps8)) / max(np.max(np.abs(maps32)), 1e-12)),
        "score_correlation": float(np.corrcoef(scores32, scores8)[0, 1]) if len(scores32) > 1 else 1.0,
    }


def passes(check):
    """AUROC may drop by less than the bar, and at its own recalibrated threshold the int8
    model may not decide worse than fp32 at its threshold on the same images."""
    drop = check["auroc_fp32"] - check["auroc_int8"]
    return bool(np.isfinite(drop) and drop < MAX_AUROC_DROP and np.isfinite(check["map_correlation_min"])
                and check["errors_int8"] <= check["errors_fp32"])


def describe_check(check):
    """The check's numbers in words, for the kept and the refused export alike."""
    shift = ""
    if check.get("good_score_to_threshold_int8") is not None and check.get("good_score_to_threshold_fp32"):
        shift = (f"; good scores at {check['good_score_to_threshold_fp32']:.2f} -> "
                 f"{check['good_score_to_threshold_int8']:.2f} of their threshold")
    return (f"image AUROC {check['auroc_fp32']:.4f} -> {check['auroc_int8']:.4f}, wrong decisions "
            f"{check['errors_fp32']} -> {check['errors_int8']} of {check['n_validation'] + check['n_synthetic']} "
            f"({check['n_validation']} validation + {check['n_synthetic']} synthetic images, "
            f"{check['decision_policy']} threshold of each model), "
            f"{100 * check['decision_agreement']:.0f}% same decisions{shift}")


def quantize_export(checkpoint_dir, staging, size, calibration, calibration_dir=None, cpu_threads=2,
                    log=None, tiling=None):
    """Replace the fp32 graph in ``staging`` (written by adkit.commands.export.export) with an int8 one
    that passes the bar, and return what deploy_config.json records about it; or raise the
    one-line UserError of a refusal. The fp32 graph in ``staging`` is the reference. A tiled
    model (``tiling``) is calibrated on tiles of the good photos and checked on whole photos
    through their tiles, as it runs."""
    from adkit.core.static_graph import MODEL_PREFIX
    from adkit.deploy.exported import model_files
    from adkit.deploy.engines import PaddleEngine

    if calibration is None:
        raise UserError(f"--quantize int8: {checkpoint_dir} has no calibration.json (training writes "
                        "it; for an older checkpoint run main.py --mode eval once)")
    paths, source = calibration_paths(calibration, calibration_dir)
    images, labels = check_set(calibration, size, tiling)
    fp32 = check_outputs(PaddleEngine(staging, cpu_threads=cpu_threads, image_size=size, quantized=False).run,
                         images, tiling, "checking the fp32 model", len(labels))
    tried = []
    with tempfile.TemporaryDirectory(dir=os.path.dirname(staging), prefix=".quantize_") as work:
        for level, op_types in LEVELS.items():
            out = os.path.join(work, level)
            counts = run_worker({"checkpoint_dir": os.path.abspath(checkpoint_dir), "work": work,
                                 "out": out, "op_types": list(op_types), "images": paths,
                                 "size": size, "cpu_threads": cpu_threads,
                                 "tiling": tiling and {"image_size": list(size), **tiling.as_config()}})
            try:
                engine = PaddleEngine(out, cpu_threads=cpu_threads, image_size=size, quantized=True,
                                      int8_ops=ONEDNN_INT8_OPS[level])
                int8 = check_outputs(engine.run, images, tiling, f"checking the int8 model ({level})", len(labels))
                check = compare(fp32, int8, labels, calibration.get("policy"))
            except (RuntimeError, ValueError) as err:  # Paddle Inference cannot run this variant
                message = (str(err).strip().splitlines() or ["?"])[0][:200]
                if log:
                    log.debug("int8 (%s): Paddle Inference failed: %s", level, message)
                tried.append((level, {"error": message}))
                continue
            tried.append((level, check))
            if log:
                log.debug("int8 (%s): %s; map correlation >= %.3f", level, describe_check(check),
                          check["map_correlation_min"])
            if passes(check):
                for path in model_files(staging):  # the fp32 graph (.json on Paddle 3, .pdmodel on 2.6)
                    os.remove(path)
                for ext in (".pdmodel", ".pdiparams"):
                    os.replace(os.path.join(out, MODEL_PREFIX + ext), os.path.join(staging, MODEL_PREFIX + ext))
                return {"level": level, "quantized_ops": counts, "int8_ops": list(ONEDNN_INT8_OPS[level]),
                        "calibration_images": len(paths),
                        "calibration_source": source, "algo": PTQ_ALGO, "check": check,
                        "max_auroc_drop": MAX_AUROC_DROP,
                        "tried": [{"level": lv, **c} for lv, c in tried]}, engine
    ran = [(lv, c) for lv, c in tried if "error" not in c]
    if not ran:
        raise UserError(f"--quantize int8: Paddle Inference could not run the int8 model "
                        f"({tried[-1][1]['error']}); export without --quantize")
    level, check = min(ran, key=lambda t: (t[1]["errors_int8"] - t[1]["errors_fp32"],
                                           t[1]["auroc_fp32"] - t[1]["auroc_int8"]))
    raise UserError(
        f"--quantize int8: refused, closest with {level} quantised (whole graph and backbone only "
        f"tried): {describe_check(check)}; the bar is an AUROC drop < {100 * MAX_AUROC_DROP:g} point "
        "and no more wrong decisions than fp32; export without --quantize")


def run_worker(job):
    """Old-IR export + PostTrainingQuantization in a child process (FLAGS_enable_pir_api=0);
    returns {op type: how many were quantised}."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["FLAGS_enable_pir_api"] = "0"
    proc = subprocess.run([sys.executable, "-m", "adkit.deploy.quantize", json.dumps(job)], cwd=PACKAGE_PARENT, env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()] or ["?"]
        raise UserError(f"--quantize int8: Paddle's post-training quantisation failed: {lines[-1][:300]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------- the child process

def legacy_static_ops():
    """Give the old-IR static graph back the ops Paddle 3.3 serves from C++ for dygraph and PIR
    only. Each wrapper appends the old op when tracing an old-IR program and calls the original
    otherwise. Patches the paddle modules of this process: only for the child process."""
    import paddle
    from paddle.base import core, framework
    from paddle.base.layer_helper import LayerHelper

    def old_static():
        return not framework.in_dygraph_mode() and not framework.in_pir_mode()

    def op(kind, inputs, attrs=None, dtype=None):
        helper = LayerHelper(kind)
        out = helper.create_variable_for_type_inference(dtype=dtype or inputs["X"][0].dtype)
        helper.append_op(type=kind, inputs=inputs, outputs={"Out": [out]}, attrs=attrs or {})
        return out

    def unary(kind):
        return lambda x, name=None: op(kind, {"X": [x]})

    def binary(kind):
        return lambda x, y, name=None: op(kind, {"X": [x], "Y": [y]}, {"axis": -1})

    def matmul(x, y, transpose_x=False, transpose_y=False, name=None):
        return op("matmul_v2", {"X": [x], "Y": [y]}, {"trans_x": transpose_x, "trans_y": transpose_y})

    def reduce(kind):
        def impl(x, axis=None, keepdim=False, name=None):
            if axis is None or (isinstance(axis, (list, tuple)) and not axis):
                dims, everything = [0], True
            else:
                dims = list(axis) if isinstance(axis, (list, tuple)) else [axis]
                everything = len(dims) == len(x.shape)
            return op(kind, {"X": [x]}, {"dim": dims, "keep_dim": keepdim, "reduce_all": everything})
        return impl

    def total(x, axis=None, dtype=None, keepdim=False, name=None):
        if dtype is not None:
            raise NotImplementedError("legacy_static_ops: sum(dtype=...)")
        return reduce("reduce_sum")(x, axis, keepdim)

    def arg(kind):
        def impl(x, axis=None, keepdim=False, dtype="int64", name=None):
            return op(kind, {"X": [x]}, {"axis": 0 if axis is None else axis, "keepdims": keepdim,
                                         "flatten": axis is None, "dtype": core.VarDesc.VarType.INT64},
                      dtype=paddle.int64)
        return impl

    shims = {"matmul": matmul, "multiply": binary("elementwise_mul"),
             "maximum": binary("elementwise_max"), "minimum": binary("elementwise_min"),
             "sum": total, "amax": reduce("reduce_max"), "amin": reduce("reduce_min"),
             "argmin": arg("arg_min"), "argmax": arg("arg_max"),
             **{name: unary(name) for name in ("sqrt", "exp", "log", "abs", "sigmoid", "tanh", "rsqrt")}}

    def wrap(original, shim):
        @functools.wraps(original)
        def call(*args, **kwargs):
            return shim(*args, **kwargs) if old_static() else original(*args, **kwargs)
        return call

    for name, shim in shims.items():
        originals = [getattr(m, name) for m in (paddle, paddle.tensor) if hasattr(m, name)]
        for module in list(sys.modules.values()):
            if not getattr(module, "__name__", "").startswith("paddle"):
                continue
            found = getattr(module, name, None)
            # the public function, or the C++ one a paddle module imported under the same name
            if found is not None and (any(found is o for o in originals)
                                      or type(found).__name__ == "builtin_function_or_method"):
                setattr(module, name, wrap(found, shim))
        method = getattr(framework.Variable, name, None)
        setattr(framework.Variable, name, shim if method is None else wrap(method, shim))


def worker(job):
    from adkit.core.runtime import tune_process

    tune_process(job["cpu_threads"])
    import paddle

    if paddle.framework.in_pir_mode() or paddle.get_flags(["FLAGS_enable_pir_api"])["FLAGS_enable_pir_api"]:
        raise RuntimeError("adkit.deploy.quantize worker needs FLAGS_enable_pir_api=0")
    legacy_static_ops()
    from paddle.static.quantization import PostTrainingQuantization

    from adkit.core.compat import ptq_data_loader
    from adkit.core.image_io import image_hw
    from adkit.core.tiling import Tiling, TileSet
    from adkit.core.static_graph import INPUT_NAME, MODEL_PREFIX
    from adkit.evaluate.evaluation import batches as image_batches
    from adkit.options.registry import load_trained

    _, method = load_trained(job["checkpoint_dir"], runtime_cfg={"device": "cpu"})
    net = method.inference_net()
    net.eval()
    size = job["size"]
    spec = [paddle.static.InputSpec([None, 3, *image_hw(size)], "float32", INPUT_NAME)]
    fp32_dir = os.path.join(job["work"], "fp32_old_ir")
    if not os.path.isfile(os.path.join(fp32_dir, MODEL_PREFIX + ".pdmodel")):
        paddle.jit.save(paddle.jit.to_static(net, input_spec=spec, full_graph=True),
                        os.path.join(fp32_dir, MODEL_PREFIX))
    if job["tiling"]:  # the tiles the model sees, a seeded sample of the photos' tiles
        images = TileSet(GoodImages(job["images"], None), Tiling.from_config(job["tiling"]),
                         MAX_CALIBRATION_IMAGES, 0, "cutting calibration tiles")
    else:
        images = GoodImages(job["images"], size)

    def batches():
        for batch in image_batches(images, CALIBRATION_BATCH, "measuring the int8 scales"):
            yield {INPUT_NAME: batch}

    paddle.enable_static()
    ptq = PostTrainingQuantization(
        executor=paddle.static.Executor(paddle.CPUPlace()), model_dir=fp32_dir,
        model_filename=MODEL_PREFIX + ".pdmodel", params_filename=MODEL_PREFIX + ".pdiparams",
        data_loader=ptq_data_loader(batches), batch_nums=-(-len(images) // CALIBRATION_BATCH), algo=PTQ_ALGO,
        quantizable_op_type=job["op_types"], weight_quantize_type="channel_wise_abs_max",
        onnx_format=True)
    ptq.quantize()
    ptq.save_quantized_model(job["out"], model_filename=MODEL_PREFIX + ".pdmodel",
                             params_filename=MODEL_PREFIX + ".pdiparams")
    counts = {}
    for block in ptq._program.blocks:
        for operator in block.ops:
            if operator.type in job["op_types"] and any(
                    name.endswith(".quantized") or "quant" in name for name in operator.input_arg_names):
                counts[operator.type] = counts.get(operator.type, 0) + 1
    return counts


if __name__ == "__main__":
    if sys.argv[1:] in (["-h"], ["--help"]):
        print("python -m adkit.deploy.quantize JOB_JSON\n\nThe child process of export_model.py --quantize int8: "
              "an old-IR export of a trained model\nand Paddle's post-training quantisation of it, "
              "described by one JSON argument\n(see run_worker). Not meant to be run by hand.")
        sys.exit(0)
    from adkit.core.runtime import framework_stdout_silenced

    with framework_stdout_silenced():
        result = worker(json.loads(sys.argv[1]))
    print(json.dumps(result))
