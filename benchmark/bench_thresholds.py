#!/usr/bin/env python
"""Compare the threshold policies on test data: what each gives a pass/fail line.

    python benchmark/bench_thresholds.py --model rd4ad --train_args "--backbone efficientnet_lite0" \
        --steps 60 [--out output/bench_thresholds]

Trains the model briefly on sample_data's brick and gravel and on a third, larger category made
here from another scikit-image texture (grass: 60 training images, 20 good and 24 defective test
images), then prints, per category and policy, the threshold and the test accuracy, precision,
recall and F1 it gives, next to the test-set F1-max oracle. The policies themselves never see
test labels; only this table does. Prints numbers, asserts nothing.
"""
import argparse
import csv
import os
import sys
import tempfile
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))


POLICIES = ("val_max", "val_fpr:0.01", "val_fpr:0.05", "val_fpr:0.1", "synthetic_f1", "test_f1")


def make_grass(root):
    """A third category from a texture sample_data does not use, with a realistic validation split."""
    import make_sample_data as msd

    category = msd.Category("grass", "grass", colour=False, foreign_texture="brick",
                            defects=("crack", "hole", "contamination"),
                            n_train=60, n_test_good=20, n_per_defect=8)
    msd.write_category(Path(root), category, index=7)
    return root


def test_rows(eval_dir):
    with open(os.path.join(eval_dir, "df_test.csv"), newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "ok"]
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    from adkit.options.registry import model_names

    parser.add_argument("--model", required=True, choices=model_names())
    parser.add_argument("--train_args", default="", help="more main.py options for training, quoted")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--out", default=None, help="training output folder (default: a temp folder)")
    parser.add_argument("--cpu_threads", type=int, default=2)
    args = parser.parse_args()

    from adkit.core.runtime import tune_process

    tune_process(args.cpu_threads)
    import logging

    import numpy as np

    from adkit.pipelines.evaluate import evaluate
    from adkit.pipelines.train import train
    from adkit.evaluate import metrics
    from adkit.evaluate.calibration import resolve_threshold
    from adkit.options.config import resolve_config

    logging.getLogger("adkit").setLevel(logging.WARNING)
    out = args.out or tempfile.mkdtemp(prefix="bench_thresholds_")
    grass_root = make_grass(tempfile.mkdtemp(prefix="grass_"))
    cases = [(os.path.join(ROOT, "sample_data"), "brick"), (os.path.join(ROOT, "sample_data"), "gravel"),
             (grass_root, "grass")]
    print(f"{args.model}, {args.steps} steps, outputs in {out}")
    print(f"{'category':<9}{'val/synth':>10}  {'policy':<14}{'threshold':>11}{'accuracy':>10}"
          f"{'precision':>11}{'recall':>8}{'F1':>8}")
    for data_dir, cls in cases:
        base = ["--model", args.model, "--data_dir", data_dir, "--cls", cls, "--output_dir", out,
                "--cpu_threads", str(args.cpu_threads)]
        train(resolve_config(base + ["--mode", "train", "--steps", str(args.steps)]
                                 + args.train_args.split()), cls)
        result = evaluate(resolve_config(base + ["--mode", "eval"]), cls)
        ckpt_dir = os.path.join(out, args.model, cls)
        rows = test_rows(os.path.join(ckpt_dir, "eval"))
        labels = np.array([r["ground_truth"] == "defect" for r in rows], int)
        scores = np.array([float(r["score"]) for r in rows])
        types = [r["defect_type"] for r in rows]
        import json

        calibration = json.load(open(os.path.join(ckpt_dir, "calibration.json")))
        sizes = f"{len(calibration['val'])}/{len(calibration['synthetic'])}"
        for policy in POLICIES:
            threshold = resolve_threshold(ckpt_dir, policy, test_f1_threshold=result["f1_threshold"])
            overall = metrics.decision_metrics(labels, scores, threshold.value, types)["overall"]
            name = policy + (" (oracle)" if policy == "test_f1" else "")
            cells = "".join(f"{'-' if overall[k] is None else format(overall[k], '.3f'):>{w}}"
                            for k, w in (("accuracy", 10), ("precision", 11), ("recall", 8), ("f1", 8)))
            print(f"{cls:<9}{sizes:>10}  {name:<14}{threshold.value:>11.4g}{cells}", flush=True)
        print(f"{cls:<9}{'':>10}  image AUROC {result['image_auroc']:.3f}, pixel AUROC "
              f"{result['pixel_auroc']:.3f}, AU-PRO {result['aupro']:.3f}", flush=True)


if __name__ == "__main__":
    main()
