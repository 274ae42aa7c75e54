#!/usr/bin/env python
"""Camera photos, small defects: each model squashed to one model input vs cut into tiles at
the photos' own resolution, through main.py as a user runs it (one process per step).

    python tools/make_camera_data.py --output_dir output/camera/stone --size 1600x1200 --defect_pixels 200-2000
    python benchmark/bench_tiles.py --data_dir output/camera --cls stone [--models patchcore rd4ad] \
        [--tile_size 256 --tile_stride 192] [--steps efficientad_s=300 rd4ad=300]

For every model and setting it prints image AUROC, pixel AUROC and AU-PRO at the photos' own
resolution (--eval_resolution original: the squashed model's map upsampled, the tiled model's
stitched), the decisions at the training-side threshold, fit (train + calibration) and eval
time, the exported model's milliseconds per megapixel (infer.py --benchmark: preprocess +
inference, Paddle Inference, the same threads) and the peak memory (max RSS) of each step,
then, for the first model's tiles, the time and peak memory of one 20-megapixel photo through
infer.py, main.py --mode eval (with a defective photo of that size) and serve.py. Prints numbers, asserts
nothing. The CPU is named at the top: compare rows of one run only.
"""
import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmark.machine import cpu_model  # noqa: E402

# the offline backbones and teacher, and each trained model's schedule (--steps overrides)
MODEL_OPTIONS = {
    "efficientad_s": [],
    "efficientad_m": ["--teacher_weights", "none"],
    "rd4ad": ["--backbone", "efficientnet_lite0"],
    "stfpm": [],
    "patchcore": [],
    "padim": [],
}
DEFAULT_STEPS = {"efficientad_s": 300, "efficientad_m": 100, "rd4ad": 300, "stfpm": 300}


def run(args, what):
    """(seconds, peak RSS in MB of that process, stdout, stderr) of one command."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed:\n{stderr[-3000:]}")
    return seconds, usage.ru_maxrss / 1024, stdout, stderr


def megapixels(folder):
    import cv2

    for root, _, names in os.walk(folder):
        for name in sorted(names):
            image = cv2.imread(os.path.join(root, name))
            if image is not None:
                return image.shape[0] * image.shape[1] / 1e6
    raise SystemExit(f"no image under {folder}")


def bench(model, setting, options, args, out):
    common = ["main.py", "--model", model, "--data_dir", args.data_dir, "--cls", args.cls, "--output_dir", out,
              "--cpu_threads", str(args.cpu_threads), *MODEL_OPTIONS[model], *options]
    steps = args.steps.get(model, DEFAULT_STEPS.get(model))
    fit_s, fit_mb, _, _ = run(common + ["--mode", "train"] + (["--steps", str(steps)] if steps else []),
                              f"{model} {setting} train")
    eval_s, eval_mb, _, _ = run(common + ["--mode", "eval", "--eval_resolution", "original"],
                                f"{model} {setting} eval")
    with open(os.path.join(out, model, "metrics.json"), encoding="utf-8") as f:
        result = json.load(f)["categories"][args.cls]
    export_dir = os.path.join(out, "export", model)
    run(["export_model.py", "--model", model, "--checkpoint_dir", os.path.join(out, model, args.cls),
         "--save_dir", export_dir], f"{model} {setting} export")
    test_dir = os.path.join(args.data_dir, args.cls, "test", "good")
    _, infer_mb, _, err = run(["infer.py", "--model_dir", export_dir, "--img_path", test_dir, "--output_dir",
                               os.path.join(out, "infer", model), "--cpu_threads", str(args.cpu_threads),
                               "--benchmark", "true", "--warmup", "1"], f"{model} {setting} infer")
    times = dict(re.findall(r"(\w+)_time: ([\d.]+)", err))
    ms_per_image = float(times["preprocess"]) + float(times["inference"])
    overall = (result.get("decision") or {}).get("overall") or {}
    return {"image_auroc": result["image_auroc"], "pixel_auroc": result["pixel_auroc"],
            "aupro": result["aupro"], "accuracy": overall.get("accuracy"), "f1": overall.get("f1"),
            "fit_s": fit_s, "eval_s": eval_s, "ms_per_mp": ms_per_image / megapixels(test_dir),
            "peak_mb": {"fit": fit_mb, "eval": eval_mb, "infer": infer_mb},
            "export_dir": export_dir}


def large_copy(args, work):
    """A test category of one good and one defective test photo scaled up to about
    --large_megapixels (the defect's mask too), its training folder linked: what eval reads."""
    import cv2

    source = os.path.join(args.data_dir, args.cls)
    target = os.path.join(work, "large", args.cls)
    kind = next(k for k in sorted(os.listdir(os.path.join(source, "test"))) if k != "good")
    good = sorted(os.listdir(os.path.join(source, "test", "good")))[0]
    bad = sorted(os.listdir(os.path.join(source, "test", kind)))[0]
    stem = os.path.splitext(bad)[0]
    pairs = [(os.path.join("test", "good", good), cv2.INTER_CUBIC),
             (os.path.join("test", kind, bad), cv2.INTER_CUBIC),
             (os.path.join("ground_truth", kind, f"{stem}_mask.png"), cv2.INTER_NEAREST)]
    for relative, interpolation in pairs:
        image = cv2.imread(os.path.join(source, relative), cv2.IMREAD_UNCHANGED)
        scale = (args.large_megapixels * 1e6 / (image.shape[0] * image.shape[1])) ** 0.5
        os.makedirs(os.path.dirname(os.path.join(target, relative)), exist_ok=True)
        cv2.imwrite(os.path.join(target, relative),
                    cv2.resize(image, None, fx=scale, fy=scale, interpolation=interpolation))
    os.symlink(os.path.abspath(os.path.join(source, "train")), os.path.join(target, "train"))
    return os.path.dirname(target), os.path.join(target, "test", "good", good)


def serve_peak(export_dir, photo, args, work):
    """(seconds of one request, peak MB of serve.py and its engine process) for one photo."""
    from benchmark.bench_serve import free_port, memory_kb
    from adkit.deploy.serving.client import ServiceClient

    port = free_port()
    with open(os.path.join(work, "serve.log"), "w+") as log:
        server = subprocess.Popen([sys.executable, "serve.py", "--model_dir", export_dir, "--port", str(port),
                                   "--cpu_threads", str(args.cpu_threads)], cwd=ROOT, stdout=log,
                                  stderr=subprocess.STDOUT)
        try:
            client = ServiceClient(f"http://127.0.0.1:{port}", timeout=600)
            if not client.wait_ready(300):
                log.seek(0)
                raise SystemExit("serve.py did not get ready: " + log.read()[-2000:])
            start = time.perf_counter()
            client.predict_file(photo)
            seconds = time.perf_counter() - start
            return seconds, memory_kb(server.pid)[1] / 1024
        finally:
            server.terminate()
            server.wait(60)


def large_photo_peaks(model, export_dir, checkpoint_out, args, work):
    """infer.py, main.py --mode eval and serve.py on photos of --large_megapixels: one line each
    with the seconds and the process's peak memory."""
    data_dir, photo = large_copy(args, work)
    import cv2

    height, width = cv2.imread(photo, cv2.IMREAD_UNCHANGED).shape[:2]
    what = f"{model} tiled, one {width}x{height} photo ({width * height / 1e6:.1f} MP)"
    seconds, peak, _, _ = run(["infer.py", "--model_dir", export_dir, "--img_path", photo, "--output_dir",
                               os.path.join(work, "large_out"), "--cpu_threads", str(args.cpu_threads)],
                              "infer on the large photo")
    print(f"\n{what}: infer.py {seconds:.1f} s, peak {peak:.0f} MB")
    seconds, peak, _, _ = run(["main.py", "--model", model, "--mode", "eval", "--data_dir", data_dir, "--cls", args.cls,
                               "--output_dir", checkpoint_out, "--cpu_threads", str(args.cpu_threads),
                               "--eval_resolution", "original"], "eval on the large photos")
    print(f"{what}: main.py --mode eval of it and one defective photo of that size {seconds:.1f} s, "
          f"peak {peak:.0f} MB")
    seconds, peak = serve_peak(export_dir, photo, args, work)
    print(f"{what}: serve.py, one request {seconds:.1f} s, peak {peak:.0f} MB (server and engine process)")


def cell(value, digits=3):
    return "-" if value is None else f"{value:.{digits}f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--cls", required=True)
    parser.add_argument("--models", nargs="+", default=["patchcore", "efficientad_s", "rd4ad"],
                        choices=list(MODEL_OPTIONS))
    parser.add_argument("--squash_size", default="256", help="--image_size of the squashed runs")
    parser.add_argument("--tile_size", default="256")
    parser.add_argument("--tile_stride", default="192")
    parser.add_argument("--tile_image_size", default="256", help="--image_size of the tiled runs")
    parser.add_argument("--steps", nargs="*", default=[], help="MODEL=STEPS for the trained models "
                        f"(default: {', '.join(f'{k}={v}' for k, v in DEFAULT_STEPS.items())})")
    parser.add_argument("--options", default="", help="more main.py options for both settings, "
                        "e.g. \"--coreset_ratio 0.01\"")
    parser.add_argument("--tile_options", default="", help="more main.py options for the tiled runs only, "
                        "e.g. \"--max_train_tiles 3000 --coreset_ratio 0.0025\"")
    parser.add_argument("--cpu_threads", type=int, default=2)
    parser.add_argument("--large_megapixels", type=float, default=20.0)
    args = parser.parse_args()
    args.steps = {k: int(v) for k, v in (item.split("=") for item in args.steps)}
    extra = shlex.split(args.options)
    settings = {"squash": ["--image_size", args.squash_size, *extra],
                "tiles": ["--image_size", args.tile_image_size, "--tile_size", args.tile_size,
                          "--tile_stride", args.tile_stride, *extra, *shlex.split(args.tile_options)]}
    print(f"CPU: {cpu_model()}, {args.cpu_threads} threads")
    print(f"data: {os.path.join(args.data_dir, args.cls)}; squash: --image_size {args.squash_size}; tiles: "
          f"--tile_size {args.tile_size} --tile_stride {args.tile_stride} --image_size {args.tile_image_size}"
          + (f"; both: {args.options}" if args.options else "")
          + (f"; tiles also: {args.tile_options}" if args.tile_options else ""))
    print("| model | setting | image AUROC | pixel AUROC | AU-PRO | accuracy | F1 | fit s | eval s | ms / MP "
          "| peak MB fit / eval / infer |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="bench_tiles_") as work:
        large_run = None
        for model in args.models:
            for setting, options in settings.items():
                r = bench(model, setting, options, args, os.path.join(work, f"{model}_{setting}"))
                print(f"| {model} | {setting} | {cell(r['image_auroc'])} | {cell(r['pixel_auroc'])} | "
                      f"{cell(r['aupro'])} | {cell(r['accuracy'])} | {cell(r['f1'])} | {r['fit_s']:.0f} | "
                      f"{r['eval_s']:.0f} | {r['ms_per_mp']:.0f} | "
                      + " / ".join(f"{r['peak_mb'][k]:.0f}" for k in ("fit", "eval", "infer")) + " |", flush=True)
                if setting == "tiles" and model == args.models[0]:
                    large_run = (model, r["export_dir"], os.path.join(work, f"{model}_{setting}"))
        if large_run and args.large_megapixels > 0:
            large_photo_peaks(*large_run, args, work)


if __name__ == "__main__":
    main()
