#!/usr/bin/env python
"""Peak memory and time of ``main.py --mode eval`` at ``--eval_resolution model`` vs
``original`` on about 100 test images of 1024x1024 px, and the metrics each gives.

    python benchmark/bench_eval_memory.py [--work_dir DIR] [--model patchcore]

The dataset is made once in --work_dir by tools/make_synthetic.py from 60 good 1024 px crops of
scikit-image's CC0 brick photo (15 for training; 45 held-out good images and 54 synthetic defects of
six kinds, i.e. 99 test images). The model is trained once at 256 px (PatchCore, ImageNet
EfficientNet-Lite0 features that ship offline). Each eval runs in a fresh process; "peak MB" is
its peak RSS. At the original resolution the maps are upsampled one image at a time into binned
histograms, so the peak should not grow with the number or size of the images.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 1024
N_GOOD = 60


def good_images(folder):
    """N_GOOD 1024 px crops (random place and turn) of one texture photo: one kind of part."""
    import cv2
    import numpy as np
    import skimage.data

    os.makedirs(folder, exist_ok=True)
    photo = skimage.data.brick()
    rng = np.random.default_rng(0)
    for i in range(N_GOOD):
        side = int(rng.integers(300, 400))
        y, x = rng.integers(0, photo.shape[0] - side), rng.integers(0, photo.shape[1] - side)
        crop = np.rot90(photo[y:y + side, x:x + side], int(rng.integers(4)))
        crop = cv2.resize(np.ascontiguousarray(crop), (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
        assert cv2.imwrite(os.path.join(folder, f"{i:03d}.png"), crop)
    return folder


def run(args, log_path):
    """(seconds, peak RSS MB) of one command in a fresh process."""
    start = time.perf_counter()
    probe = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")
    with open(log_path, "a") as log:
        done = subprocess.run([sys.executable, "-c", probe, sys.executable, *args], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=log, text=True)
    if done.returncode:
        sys.exit(f"failed: {' '.join(args)} (see {log_path})")
    return time.perf_counter() - start, int(done.stdout.strip().splitlines()[-1]) / 1024.0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", default=os.path.join(tempfile.gettempdir(), "adkit_bench_eval_memory"))
    parser.add_argument("--model", default="patchcore")
    parser.add_argument("--cpu_threads", type=int, default=2)
    args = parser.parse_args()
    data, category = os.path.join(args.work_dir, "data"), "big"
    log_path = os.path.join(args.work_dir, "log.txt")
    os.makedirs(args.work_dir, exist_ok=True)
    if not os.path.isdir(os.path.join(data, category)):
        good = good_images(os.path.join(args.work_dir, "good"))
        run([os.path.join("tools", "make_synthetic.py"), "--good_dir", good, "--output_dir",
             os.path.join(data, category), "--test_ratio", "0.75", "--per_kind", "9"], log_path)
    out = os.path.join(args.work_dir, "out")
    common = ["main.py", "--model", args.model, "--data_dir", data, "--cls", category,
              "--output_dir", out, "--cpu_threads", str(args.cpu_threads)]
    if not os.path.isfile(os.path.join(out, args.model, category, "calibration.json")):
        seconds, peak = run(common + ["--mode", "train"], log_path)
        print(f"train: {seconds:.1f} s, peak {peak:.0f} MB")
    n_test = sum(len(files) for _, _, files in os.walk(os.path.join(data, category, "test")))
    print(f"{'eval_resolution':<18}{'s':>8}{'peak MB':>10}{'image AUROC':>13}{'pixel AUROC':>13}"
          f"{'AU-PRO':>9}   ({n_test} test images of {SIZE}x{SIZE}, model at 256 px, "
          f"{args.cpu_threads} threads)")
    for resolution in ("model", "original"):
        seconds, peak = run(common + ["--mode", "eval", "--eval_resolution", resolution,
                                      "--save_format", "png"], log_path)
        result = json.load(open(os.path.join(out, args.model, "metrics.json")))["categories"][category]
        print(f"{resolution:<18}{seconds:>8.1f}{peak:>10.0f}{result['image_auroc']:>13.4f}"
              f"{result['pixel_auroc']:>13.4f}{result['aupro']:>9.4f}")


if __name__ == "__main__":
    main()
