#!/usr/bin/env python
"""Fitting cost per method on 200 good images: seconds, peak memory, exported model size, then
the calibration that training runs after the fit and the per-image scoring time of eval
(dygraph, as main.py runs it) against the exported graph on Paddle Inference.

    python benchmark/bench_fit.py                       # every method at 256 px
    python benchmark/bench_fit.py --cases patchcore --num_images 500   # PatchCore's large bank
    python benchmark/bench_fit.py --cases padim-wrn50 padim-wrn50-fp16   # PaDiM's memory case

The images are crops, flips and quarter turns of sample_data/brick's good images (written
once into --work_dir). PatchCore and PaDiM run on ImageNet EfficientNet-Lite0 features (shipped
with the pip package), so the coreset search meets real feature structure; backbones with no
offline weights (ResNet-18, WRN-50-2) run with random weights, which changes neither the time
nor the memory. Trained methods (STFPM, RD4AD, EfficientAD) fit one epoch (``--epochs``).
Each case runs in a fresh process; "fit peak MB" is that process's peak RSS up to the end of
fit (images already loaded), "export MB" the size of the exported parameters. "calib s" is
adkit.evaluate.calibration.calibrate on the fitted model (every training and validation image and the
synthetic defects, with the engine main.py's train and eval use, adkit.deploy.engines.scoring_engine);
"eval ms/img" and "graph ms/img" score the 10 held-out images at --eval_batch_size through that
engine and through the exported folder.
"""
import argparse
import glob
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from adkit.options.registry import benchmark_cases  # noqa: E402
from machine import cpu_model  # noqa: E402

DEFAULT_IMAGES = 200
OFFLINE_BACKBONES = ("efficientnet_lite0", "efficientnet_lite2")
EXTRA_CASES = {  # label: (model, options, image size or None for --image_size)
    "padim-wrn50": ("padim", {"backbone": "wide_resnet50_2", "backbone_weights": "none"}, 224),
    "padim-wrn50-fp16": ("padim", {"backbone": "wide_resnet50_2", "backbone_weights": "none",
                                   "stats_dtype": "float16"}, 224),
}


def cases():
    out = {}
    for label, (model, options) in benchmark_cases().items():
        options = dict(options)
        if options.get("backbone", "efficientnet_lite0") in OFFLINE_BACKBONES:
            options.pop("backbone_weights", None)  # the real ImageNet weights: they ship offline
        out[label] = (model, options, None)
    out.update(EXTRA_CASES)
    return out


def prepare_images(folder, size, count):
    import cv2
    import numpy as np

    if len(glob.glob(os.path.join(folder, "*.png"))) == count:
        return sorted(glob.glob(os.path.join(folder, "*.png")))
    os.makedirs(folder, exist_ok=True)
    sources = [cv2.imread(p) for p in sorted(glob.glob(os.path.join(ROOT, "sample_data", "brick", "train", "good", "*.png")))]
    rng = np.random.default_rng(0)
    for i in range(count):
        image = sources[i % len(sources)]
        side = int(rng.uniform(0.7, 1.0) * min(image.shape[:2]))
        y, x = rng.integers(0, image.shape[0] - side + 1), rng.integers(0, image.shape[1] - side + 1)
        crop = np.rot90(image[y:y + side, x:x + side], k=int(rng.integers(4)))
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        cv2.imwrite(os.path.join(folder, f"{i:03d}.png"), cv2.resize(np.ascontiguousarray(crop), (size, size),
                                                                    interpolation=cv2.INTER_AREA))
    return sorted(glob.glob(os.path.join(folder, "*.png")))


def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(job):
    """Fit one case in this process and print a JSON line of its numbers."""
    import logging

    from adkit.core.runtime import tune_process

    tune_process(job["cpu_threads"])
    logging.getLogger("adkit").setLevel(logging.WARNING)
    from adkit.evaluate.calibration import calibrate
    from adkit.options.config import resolve_config
    from adkit.deploy.engines import PaddleEngine, scoring_engine
    from adkit.options.registry import build_method, save_training_config
    from adkit.evaluate.thresholds import DEFAULT_POLICY
    from adkit.datasets import ImageDataset
    from adkit.commands.export import export

    model, options, size = job["model"], job["options"], job["image_size"]
    argv = ["--model", model, "--mode", "train", "--image_size", str(size), "--epochs", "1"]
    argv += ["--steps", str(job["steps"])] if job["steps"] else []
    argv += [word for key, value in options.items() for word in (f"--{key}", str(value))]
    cfg = resolve_config(argv + ["--save_interval", str(10 ** 9), "--log_interval", str(10 ** 9),
                                 "--cpu_threads", str(job["cpu_threads"])])
    train = ImageDataset(job["images"][:-10], size).preload()
    val = ImageDataset(job["images"][-10:], size).preload()
    with tempfile.TemporaryDirectory() as folder:
        before = peak_mb()
        start = time.perf_counter()
        method = build_method(cfg)
        save_training_config(cfg, folder)
        method.fit(train, val, folder)
        seconds = time.perf_counter() - start
        fit_peak = peak_mb()
        start = time.perf_counter()
        engine = scoring_engine(method, cfg)  # what main.py's train and eval score with
        calibrate(engine.run, train, val, job["eval_batch_size"],
                  int(cfg["seed"]), DEFAULT_POLICY)
        calibration_s = time.perf_counter() - start
        export(model, folder, os.path.join(folder, "export"))
        params = glob.glob(os.path.join(folder, "export", "*.pdiparams"))
        export_mb = sum(os.path.getsize(p) for p in params) / 2 ** 20
        per_image = {name: scoring_seconds(engine, val, job["eval_batch_size"]) for name, engine in (
            ("eval", engine),
            ("graph", PaddleEngine(os.path.join(folder, "export"), cpu_threads=job["cpu_threads"],
                                   image_size=size)))}
    print(json.dumps({"fit_s": seconds, "images": len(train), "before_mb": before,
                      "fit_peak_mb": fit_peak, "export_mb": export_mb, "calibration_s": calibration_s,
                      "eval_ms": per_image["eval"] * 1e3, "graph_ms": per_image["graph"] * 1e3}))


def scoring_seconds(engine, images, batch_size):
    """Seconds per image of ``engine`` over ``images`` (after one warm-up batch)."""
    from adkit.evaluate.evaluation import run_inference

    run_inference(engine.run, [images[i] for i in range(min(batch_size, len(images)))], batch_size)
    start = time.perf_counter()
    run_inference(engine.run, images, batch_size)
    return (time.perf_counter() - start) / len(images)


def main():
    table = cases()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=sorted(table), help="default: all but the padim-wrn50 cases")
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--cpu_threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=0, help="trained methods: steps instead of one epoch")
    parser.add_argument("--num_images", type=int, default=DEFAULT_IMAGES,
                        help="good images (10 of them held out for validation)")
    parser.add_argument("--eval_batch_size", type=int, default=4)
    parser.add_argument("--work_dir", default=os.path.join(ROOT, "output", "bench_fit"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    labels = args.cases or [label for label in table if label not in EXTRA_CASES]
    print(f"{'case':<18}{'images':>7}{'fit s':>9}{'fit peak MB':>13}{'(before fit)':>14}{'export MB':>11}"
          f"{'calib s':>9}{'eval ms/img':>13}{'graph ms/img':>14}   ({args.cpu_threads} threads, "
          f"{cpu_model()})", flush=True)
    for label in labels:
        model, options, size = table[label]
        size = size or args.image_size
        images = prepare_images(os.path.join(args.work_dir, f"images_{size}_{args.num_images}"), size,
                                args.num_images)
        job = {"model": model, "options": options, "image_size": size, "images": images,
               "cpu_threads": args.cpu_threads, "steps": args.steps,
               "eval_batch_size": args.eval_batch_size}
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(job)],
                              cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{label:<18} failed: {proc.stderr.strip().splitlines()[-1:]}", flush=True)
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{label:<18}{r['images']:>7}{r['fit_s']:>9.1f}{r['fit_peak_mb']:>13.0f}{r['before_mb']:>14.0f}"
              f"{r['export_mb']:>11.1f}{r['calibration_s']:>9.1f}{r['eval_ms']:>13.0f}{r['graph_ms']:>14.0f}",
              flush=True)


if __name__ == "__main__":
    main()
