#!/usr/bin/env python
"""int8 vs fp32 deployment, per model, on sample_data: speed in Paddle Inference with oneDNN and
the TEST metrics of both exports (a benchmark: test labels are used here, never by the export).

    python benchmark/bench_int8.py                        # all six models, brick, 256 px
    python benchmark/bench_int8.py --models rd4ad padim --cls gravel

Each model trains briefly as README's sample_data table (EfficientAD-S 30 steps, -M 10, RD4AD
Lite0 100, STFPM Lite0 30; PatchCore and PaDiM fit in one pass), with the offline weights
(EfficientNet-Lite0 ImageNet features, EfficientAD's shipped teacher), then is exported twice:
``export_model.py`` (fp32) and ``export_model.py --quantize int8``, which keeps int8 only if it
passes the training-side accuracy bar (adkit/deploy/quantize.py) and otherwise refuses with one line.
Checkpoints and exports are reused from --work_dir.

Speed: batch 1, --cpu_threads threads, the graph alone (engine.run on a prepared input), --warmup
runs then the median of --runs; every configuration in a fresh process, configurations of a
model interleaved over --rounds (the fastest round kept: the machine may be shared).
When the export refuses int8, the refused model is still made (the bar lifted in-process, into
export_int8_refused/) so that its speed and test metrics show what the bar turned down.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import machine  # noqa: E402  (benchmark/machine.py, beside this script)

SCHEDULES = {  # README's sample_data table
    "efficientad_s": ["--steps", "30"],
    "efficientad_m": ["--steps", "10", "--teacher_weights", "none"],  # no medium teacher ships
    "rd4ad": ["--steps", "100", "--backbone", "efficientnet_lite0"],
    "stfpm": ["--steps", "30", "--backbone", "efficientnet_lite0"],
    "patchcore": ["--backbone", "efficientnet_lite0"],
    "padim": ["--backbone", "efficientnet_lite0"],
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(SCHEDULES), default=list(SCHEDULES))
    parser.add_argument("--cls", default="brick")
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--cpu_threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work_dir", default=os.path.join(ROOT, "output", "bench_int8"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args()


def run(cmd):
    return subprocess.run([sys.executable] + cmd, cwd=ROOT, capture_output=True, text=True, check=False,
                          env={k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"})


def prepare(model, args):
    """(fp32 export, int8 export or None, the int8 export's one-line refusal or None, seconds)."""
    out = os.path.join(args.work_dir, f"{model}_{args.cls}_{args.image_size}")
    ckpt = os.path.join(out, model, args.cls)
    seconds = {}
    if not os.path.isfile(os.path.join(ckpt, "calibration.json")):
        print(f"  training {model} ...", flush=True)
        start = time.time()
        proc = run(["main.py", "--model", model, "--mode", "train", "--data_dir", "sample_data", "--cls",
                    args.cls, "--image_size", str(args.image_size), "--output_dir", out,
                    "--cpu_threads", str(args.cpu_threads)] + SCHEDULES[model])
        if proc.returncode:
            sys.exit(f"training {model} failed:\n{proc.stderr[-3000:]}")
        seconds["train"] = time.time() - start
    exports = {}
    refusal = None
    for precision in ("fp32", "int8"):
        folder = os.path.join(out, f"export_{precision}")
        marker = folder + ".refused"
        if precision == "int8" and os.path.isfile(marker):
            with open(marker, encoding="utf-8") as f:
                refusal = f.read().strip()
            break
        if not os.path.isfile(os.path.join(folder, "deploy_config.json")):
            print(f"  exporting {model} {precision} ...", flush=True)
            start = time.time()
            extra = ["--quantize", "int8"] if precision == "int8" else []
            proc = run(["export_model.py", "--model", model, "--checkpoint_dir", ckpt, "--save_dir", folder,
                        "--cpu_threads", str(args.cpu_threads)] + extra)
            seconds[f"export_{precision}"] = time.time() - start
            if proc.returncode:
                lines = proc.stderr.strip().splitlines() or ["?"]
                if precision == "int8" and proc.returncode == 2 and len(lines) == 1:
                    refusal = lines[0]
                    with open(marker, "w", encoding="utf-8") as f:
                        f.write(refusal + "\n")
                    break
                sys.exit(f"export {model} {precision} failed:\n{proc.stderr[-3000:]}")
        exports[precision] = folder
    if refusal:  # time and score the refused int8 model anyway: the bar lifted, never deployed
        folder = os.path.join(out, "export_int8_refused")
        if not os.path.isfile(os.path.join(folder, "deploy_config.json")):
            best = refusal.split("at best (")[-1].split(" quantised")[0]  # the level that came closest
            code = ("import sys, adkit.deploy.quantize as q, export_model; q.MAX_AUROC_DROP = float('inf'); "
                    f"q.LEVELS = {{{best!r}: q.LEVELS[{best!r}]}}; export_model.main(sys.argv[1:])")
            proc = run(["-c", code, "--model", model, "--checkpoint_dir", ckpt, "--save_dir", folder,
                        "--cpu_threads", str(args.cpu_threads), "--quantize", "int8"])
            if proc.returncode:
                sys.exit(f"forced int8 export of {model} failed:\n{proc.stderr[-3000:]}")
        exports["int8"] = folder
    return exports, refusal, seconds


def worker(job):
    """Time one export (batch 1) and score it on the test set; prints one JSON line."""
    import numpy as np

    from adkit.core.runtime import keep_freed_memory, tune_process

    keep_freed_memory()
    tune_process(job["cpu_threads"])
    from adkit.deploy.engines import create_engine
    from adkit.evaluate.evaluation import evaluate_dataset
    from adkit.datasets import MVTecCategory, TestDataset

    size = job["image_size"]
    engine = create_engine("paddle", job["export"], cpu_threads=job["cpu_threads"], image_size=size)
    category = MVTecCategory(os.path.join(ROOT, "sample_data"), job["cls"])
    test_set = TestDataset(category.test_items(), size, category.defect_kinds)
    one = np.ascontiguousarray(test_set[0][None])
    times = []
    for index in range(job["warmup"] + job["runs"]):
        start = time.perf_counter()
        engine.run(one)
        if index >= job["warmup"]:
            times.append(time.perf_counter() - start)
    result = {"ms": 1000 * statistics.median(times)}
    if job["metrics"]:
        metrics = evaluate_dataset(engine.run, test_set, 1)[0]
        result.update({k: metrics.get(k) for k in ("image_auroc", "pixel_auroc", "aupro")})
    print(json.dumps(result))


def measure(job):
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(job)], cwd=ROOT,
                          capture_output=True, text=True, check=False,
                          env={k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"})
    if proc.returncode:
        return {"failed": (proc.stderr.strip().splitlines() or ["?"])[-1][:120]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cpu_model():
    """(CPU name, whether it has VNNI int8 instructions)."""
    return machine.cpu_model(), "yes" if machine.cpu_has("avx512_vnni", "avx_vnni") else "no"


def main():
    args = parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    os.makedirs(args.work_dir, exist_ok=True)
    name, vnni = cpu_model()
    print(f"CPU {name}, VNNI {vnni}, {os.cpu_count()} CPUs; {args.cpu_threads} threads, {args.image_size} px, "
          f"category {args.cls}")
    rows = []
    for model in args.models:
        print(f"{model}:", flush=True)
        exports, refusal, seconds = prepare(model, args)
        load = os.getloadavg()[0]
        results = {}
        for round_index in range(args.rounds):
            for precision, folder in exports.items():
                job = {"export": folder, "cls": args.cls, "image_size": args.image_size,
                       "cpu_threads": args.cpu_threads, "warmup": args.warmup, "runs": args.runs,
                       "metrics": round_index == 0}
                result = measure(job)
                if precision not in results:
                    results[precision] = result
                elif "failed" not in result and result["ms"] < results[precision].get("ms", float("inf")):
                    results[precision]["ms"] = result["ms"]
        quant = {}
        if "int8" in exports:
            with open(os.path.join(exports["int8"], "deploy_config.json"), encoding="utf-8") as f:
                quant = json.load(f)["quantization"]
        row = {"model": model, "load": load, "results": results, "refusal": refusal, "quantization": quant,
               "seconds": seconds}
        rows.append(row)
        print("  " + json.dumps(row), flush=True)
    print_table(rows, name, vnni, args)


def fmt(value, digits=3):
    return "-" if value is None else f"{value:.{digits}f}"


def print_table(rows, name, vnni, args):
    print(f"\nCPU {name}, VNNI {vnni}; batch 1, {args.cpu_threads} threads, {args.image_size} px, "
          f"sample_data/{args.cls} TEST set (benchmark only)")
    print("| model | int8 export | quantised | ms fp32 | ms int8 | image AUROC fp32 / int8 | "
          "pixel AUROC fp32 / int8 | AU-PRO fp32 / int8 | check AUROC fp32 / int8 (val+synth) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        r32, r8 = row["results"].get("fp32", {}), row["results"].get("int8", {})
        q = row["quantization"] or {}
        check = q.get("check") or {}
        kept = "refused" if row["refusal"] else "kept"
        level = q.get("level", "?") + (" (bar lifted)" if row["refusal"] else "")
        check_text = f"{fmt(check.get('auroc_fp32'))} / {fmt(check.get('auroc_int8'))}"
        print(f"| {row['model']} | {kept} | {level} | {fmt(r32.get('ms'), 1)} | {fmt(r8.get('ms'), 1)} | "
              f"{fmt(r32.get('image_auroc'))} / {fmt(r8.get('image_auroc'))} | "
              f"{fmt(r32.get('pixel_auroc'))} / {fmt(r8.get('pixel_auroc'))} | "
              f"{fmt(r32.get('aupro'))} / {fmt(r8.get('aupro'))} | {check_text} |")
    print("refusals:")
    for row in rows:
        if row["refusal"]:
            print(f"  {row['model']}: {row['refusal']}")


if __name__ == "__main__":
    main()
