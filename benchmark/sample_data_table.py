#!/usr/bin/env python
"""The README's "Measured on the shipped data" table: all six models on sample_data's two categories, each
trained and evaluated through main.py (one process per run, as a user runs it), printed as the
Markdown rows the README holds. The README's numbers come from this script, not by hand.

    python benchmark/sample_data_table.py [--models rd4ad patchcore] [--cls brick]

256 px, the README's short schedules, the offline backbones (EfficientNet-Lite0; EfficientAD:
the shipped teacher), the default threshold policy (synthetic_f1, training side only).
Accuracy and F1 are the decisions at that threshold on the test set. Prints numbers, asserts
nothing; seeded, so a second run on the same machine gives the same table.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# label, --model, the options of the README's schedule
RUNS = {
    "efficientad_s": ("EfficientAD-S (30 steps)", ["--steps", "30"]),
    "efficientad_m": ("EfficientAD-M (10 steps, random teacher: none is shipped)",
                      ["--steps", "10", "--teacher_weights", "none"]),
    "rd4ad": ("RD4AD Lite0 (100 steps)", ["--backbone", "efficientnet_lite0", "--steps", "100"]),
    "stfpm": ("STFPM Lite0 (30 steps)", ["--steps", "30"]),
    "patchcore": ("PatchCore Lite0 10% (no training)", []),
    "padim": ("PaDiM Lite0 (no training)", []),
}


def run_one(model, cls, out, cpu_threads):
    """Train + eval through main.py; the category's metrics.json entry."""
    common = [sys.executable, os.path.join(ROOT, "main.py"), "--model", model, "--data_dir",
              os.path.join(ROOT, "sample_data"), "--cls", cls, "--output_dir", out,
              "--image_size", "256", "--cpu_threads", str(cpu_threads)]
    for mode, extra in (("train", RUNS[model][1]), ("eval", [])):
        proc = subprocess.run(common + ["--mode", mode] + extra, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{model} {cls} {mode} failed:\n{proc.stderr[-2000:]}")
    with open(os.path.join(out, model, "metrics.json"), encoding="utf-8") as f:
        return json.load(f)["categories"][cls]


def row(label, cls, result):
    overall = (result.get("decision") or {}).get("overall") or {}

    def cell(value):
        return "-" if value is None else f"{value:.3f}"

    return (f"| {label} | {cls} | {cell(result.get('image_auroc'))} | {cell(result.get('pixel_auroc'))} | "
            f"{cell(result.get('aupro'))} | {cell(overall.get('accuracy'))} | {cell(overall.get('f1'))} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--cls", nargs="+", default=["brick", "gravel"])
    parser.add_argument("--cpu_threads", type=int, default=2)
    args = parser.parse_args()
    print("| model (schedule) | category | image AUROC | pixel AUROC | AU-PRO | accuracy | F1 |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as out:
        for model in args.models:
            for cls in args.cls:
                start = time.monotonic()
                result = run_one(model, cls, out, args.cpu_threads)
                print(row(RUNS[model][0], cls, result), flush=True)
                print(f"{model} {cls}: {time.monotonic() - start:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
