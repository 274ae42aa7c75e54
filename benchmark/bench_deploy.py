#!/usr/bin/env python
"""Deployment speed and memory: dygraph vs Paddle Inference (oneDNN on/off) vs ONNX Runtime.

    python benchmark/bench_deploy.py            # 4 models at 256 px, batch 1 and 8
    python benchmark/bench_deploy.py --quick    # 2 small models at 128 px: a smoke run

On 2 cores the full run took 11 min the first time (4 min of it building the models) and
7 min once built; --quick about 1.5 min.

Models are untrained (random init; speed does not depend on the weights): each is "trained" for
one step with main.py, then exported with export_model.py --to_onnx, once, into --work_dir.

Time is end to end per image, from image file to map and score: read + resize + to float
(datasets.model_input, as infer.py) + run (+ copy out). Postprocessing (overlays, writing maps) is
excluded everywhere. One warm-up batch, then batches until --seconds of timed work (at least
one); the median batch time is divided by the batch size. Every configuration runs in a fresh
process; its peak memory is that process's ru_maxrss (the ONNX Runtime process never imports
Paddle); "import MB" is the same high-water mark right after importing the runtime, before the
model loads. Inputs are sample_data brick test images upscaled to 512x512, so resizing costs
something, as with real camera images.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from adkit.options.registry import all_specs, benchmark_cases  # noqa: E402

MODELS = {label: (model, [word for key, value in options.items() for word in (f"--{key}", str(value))])
          for label, (model, options) in benchmark_cases().items()}  # label: (--model, options)
QUICK_MODELS = tuple(dict.fromkeys(spec.names[0] for spec in all_specs().values()))  # one per method
ENGINES = ("dygraph", "pi-onednn", "pi-plain", "onnxruntime")
INPUT_SIDE = 512
NUM_IMAGES = 16


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"only {', '.join(QUICK_MODELS)} at 128 px, 1 s per configuration")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), help="default: all")
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--cpu_threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0, help="timed work per configuration")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every configuration this many times, interleaved, and keep "
                             "the fastest (steadier numbers on a shared machine)")
    parser.add_argument("--timeout", type=float, default=300.0, help="per configuration")
    parser.add_argument("--work_dir", default=os.path.join(ROOT, "output", "bench_deploy"),
                        help="checkpoints, exports and input images (reused between runs)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # JSON job: run one configuration
    args = parser.parse_args()
    if args.quick:
        args.image_size, args.seconds = 128, 1.0
        args.models = args.models or list(QUICK_MODELS)
    args.models = args.models or list(MODELS)
    return args


# ------------------------------------------------------------------------------ preparation

def run_checked(cmd):
    proc = subprocess.run([sys.executable] + cmd, check=False, cwd=ROOT, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")


def prepare_model(label, work_dir, image_size):
    """(checkpoint dir, export dir) of a one-step model; built once, then reused."""
    model, options = MODELS[label]
    out = os.path.join(work_dir, f"{label}_{image_size}")
    ckpt_dir = os.path.join(out, model, "brick")
    export_dir = os.path.join(out, "export")
    if not os.path.isfile(os.path.join(export_dir, "model.onnx")):
        print(f"preparing {label} at {image_size} px (one training step, export, ONNX) ...", flush=True)
        run_checked(["main.py", "--model", model, "--mode", "train", "--data_dir", "sample_data",
                     "--cls", "brick", "--steps", "1", "--batch_size", "1", "--image_size",
                     str(image_size), "--output_dir", out] + options)
        run_checked(["export_model.py", "--model", model, "--checkpoint_dir", ckpt_dir,
                     "--save_dir", export_dir, "--to_onnx"])
    return ckpt_dir, export_dir


def prepare_images(work_dir):
    import glob

    import cv2

    folder = os.path.join(work_dir, f"images_{INPUT_SIDE}")
    if not os.path.isdir(folder):
        os.makedirs(folder)
        sources = sorted(glob.glob(os.path.join(ROOT, "sample_data", "brick", "test", "*", "*.png")))
        for i, path in enumerate(sources[:NUM_IMAGES]):
            image = cv2.resize(cv2.imread(path), (INPUT_SIDE, INPUT_SIDE), interpolation=cv2.INTER_CUBIC)
            cv2.imwrite(os.path.join(folder, f"{i:03d}.png"), image)
    return sorted(glob.glob(os.path.join(folder, "*.png")))


# ---------------------------------------------------------------------------------- worker

def build_runner(job):
    """A function: float32 [N,3,S,S] batch -> (maps, scores) as numpy, for one engine."""
    engine = job["engine"]
    if engine == "onnxruntime":  # no Paddle in this process
        from adkit.deploy.engines import create_engine

        return create_engine("onnxruntime", job["export_dir"], cpu_threads=job["cpu_threads"]).run
    if engine == "dygraph":
        from adkit.deploy.engines import DygraphEngine
        from adkit.options.registry import load_trained

        _, method = load_trained(job["ckpt_dir"])
        return DygraphEngine(method.inference_net()).run
    from adkit.deploy.engines import create_engine

    return create_engine("paddle", job["export_dir"], cpu_threads=job["cpu_threads"],
                         enable_mkldnn=engine == "pi-onednn", max_batch_size=job["batch_size"],
                         image_size=job["image_size"]).run


def worker(job):
    from adkit.core.image_io import model_input, read_rgb

    paths, size, batch_size = job["images"], job["image_size"], job["batch_size"]
    if job["engine"] == "onnxruntime":
        from adkit.core.runtime import keep_freed_memory

        keep_freed_memory()  # as infer.py does for every backend
        import onnxruntime  # noqa: F401  (imported here only to measure its memory)
    else:
        from adkit.core.runtime import tune_process

        tune_process(job["cpu_threads"])  # imports Paddle with this many threads
    import_mb = peak_mb()
    run = build_runner(job)
    batches = [paths[i:i + batch_size] for i in range(0, len(paths) - batch_size + 1, batch_size)]
    pre, infer, timed = [], [], 0.0
    for index in range(1000):
        chunk = batches[index % len(batches)]
        t0 = time.perf_counter()
        batch = np.stack([model_input(read_rgb(p), size) for p in chunk])
        t1 = time.perf_counter()
        run(batch)
        t2 = time.perf_counter()
        if index == 0:
            continue  # warm-up: first-run allocation and kernel selection
        pre.append((t1 - t0) / batch_size)
        infer.append((t2 - t1) / batch_size)
        timed += t2 - t0
        if timed >= job["seconds"]:
            break
    print(json.dumps({
        "pre_ms": 1000 * statistics.median(pre), "run_ms": 1000 * statistics.median(infer),
        "total_ms": 1000 * statistics.median(p + i for p, i in zip(pre, infer)),
        "batches": len(infer), "import_mb": import_mb, "peak_mb": peak_mb()}))


def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(job, timeout):
    """Run one configuration in a fresh process; its result dict, or {'failed': reason}."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # set by tune_process
    try:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(job)],
                              check=False, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"failed": f"timeout {timeout:.0f}s"}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"failed": f"exit {proc.returncode}: {last[:60]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def faster(result, other):
    if "failed" in result:
        return False
    return "failed" in other or result["total_ms"] < other["total_ms"]


# ---------------------------------------------------------------------------------- report

def print_table(results):
    print(f"\n{'model':<14}{'batch':>6}  {'engine':<12}{'total ms/img':>13}{'run ms/img':>12}"
          f"{'read+resize':>12}{'peak MB':>9}{'import MB':>10}")
    for (label, batch_size, engine), r in results.items():
        if "failed" in r:
            print(f"{label:<14}{batch_size:>6}  {engine:<12}  FAILED ({r['failed']})")
            continue
        print(f"{label:<14}{batch_size:>6}  {engine:<12}{r['total_ms']:>13.1f}{r['run_ms']:>12.1f}"
              f"{r['pre_ms']:>12.1f}{r['peak_mb']:>9.0f}{r['import_mb']:>10.0f}")


def print_ratios(results, labels, batch_sizes):
    print("\nratios on total ms/img (PI best = faster of oneDNN on/off); targets: PI/ORT <= 1, "
          "dygraph/PI >= 4")
    for label in labels:
        for batch_size in batch_sizes:
            total = {engine: r["total_ms"] for (l, b, engine), r in results.items()
                     if l == label and b == batch_size and "failed" not in r}
            pi = {e: total[e] for e in ("pi-onednn", "pi-plain") if e in total}
            if not pi:
                continue
            best = min(pi, key=pi.get)
            cells = [f"PI best = {best}"]
            if "onnxruntime" in total:
                cells.append(f"PI/ORT {pi[best] / total['onnxruntime']:.2f}")
            if "dygraph" in total:
                cells.append(f"dygraph/PI {total['dygraph'] / pi[best]:.2f}")
            print(f"  {label:<14} batch {batch_size}: " + ", ".join(cells))


def main():
    args = parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    started = time.time()
    os.makedirs(args.work_dir, exist_ok=True)
    images = prepare_images(args.work_dir)
    prepared = {label: prepare_model(label, args.work_dir, args.image_size) for label in args.models}
    load = os.getloadavg()[0]
    print(f"{os.cpu_count()} CPUs, load average {load:.2f} before timing"
          + ("  (WARNING: other processes are busy; timings will be inflated)" if load > 0.5 else ""))
    print(f"threads {args.cpu_threads}, model input {args.image_size} px, "
          f"inputs {INPUT_SIDE}x{INPUT_SIDE} PNG, {args.seconds:g} s timed per configuration")
    results = {}
    for _ in range(args.rounds):
        for label in args.models:
            ckpt_dir, export_dir = prepared[label]
            for batch_size in args.batch_sizes:
                for engine in args.engines:
                    job = {"engine": engine, "ckpt_dir": ckpt_dir, "export_dir": export_dir,
                           "images": images, "image_size": args.image_size,
                           "batch_size": batch_size, "cpu_threads": args.cpu_threads,
                           "seconds": args.seconds}
                    result = measure(job, args.timeout)
                    key = (label, batch_size, engine)
                    if key not in results or faster(result, results[key]):
                        results[key] = result
                    shown = result.get("failed") or f"{result['total_ms']:.1f} ms/img"
                    print(f"  {label} batch {batch_size} {engine}: {shown}", flush=True)
    print_table(results)
    print_ratios(results, args.models, args.batch_sizes)
    print(f"\nwall time {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
