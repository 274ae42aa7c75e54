#!/usr/bin/env python
"""Run an exported model with Paddle Inference (or ONNX Runtime) and write maps, overlays, scores.

    python infer.py --model_dir inference/efficientad_s_brick --img_path sample_data/brick/test \
        --device cpu --cpu_threads 2 --enable_mkldnn true --benchmark true --output_dir infer_out
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

from adkit.errors import UserError, exit_on_user_error
from adkit.runtime import cpu_threads_from_argv, set_cpu_threads

TIME_KEYS = ("preprocess_time", "inference_time", "postprocess_time")


def str2bool(value):
    lowered = str(value).strip().lower()
    if lowered in ("true", "t", "yes", "y", "1", "on"):
        return True
    if lowered in ("false", "f", "no", "n", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def parse_args(argv):
    from adkit.config import OneLineParser

    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="folder written by export_model.py")
    parser.add_argument("--img_path", required=True, help="an image file or a folder of images")
    parser.add_argument("--output_dir", default="output/infer", help="where overlays, maps and the CSV go")
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    parser.add_argument("--gpu_id", type=int, default=0)
    parser.add_argument("--cpu_threads", type=int, default=2)
    parser.add_argument("--enable_mkldnn", type=str2bool, default=True, help="oneDNN on CPU (true/false)")
    parser.add_argument("--use_tensorrt", type=str2bool, default=False, help="TensorRT on GPU (true/false)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16"))
    parser.add_argument("--backend", default="paddle", choices=("paddle", "onnxruntime"))
    parser.add_argument("--benchmark", type=str2bool, default=False,
                        help="report per-stage ms per image (after warm-up, median)")
    parser.add_argument("--warmup", type=int, default=2, help="batches excluded from --benchmark timing")
    parser.add_argument("--save_format", default="npy", choices=("png", "npy", "tiff"),
                        help="png: overlays only; npy: + map .npy; tiff: + map .npy and .tiff")
    parser.add_argument("--threshold", type=float, default=None,
                        help="score threshold for labels (default: the one stored at export)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise UserError(f"--batch_size must be >= 1, got {args.batch_size}")
    return args


def load_batch(paths, image_size):
    from datasets import read_rgb, resize_rgb, to_chw_float

    return np.stack([to_chw_float(resize_rgb(read_rgb(p), image_size)) for p in paths])


def run(args):
    from adkit.deploy import read_deploy_config
    from adkit.engines import create_engine
    from adkit.predictions import write_image_outputs
    from datasets import collect_images

    deploy = read_deploy_config(args.model_dir)
    size = int(deploy["image_size"])
    paths = collect_images(args.img_path)
    if args.batch_size > len(paths):
        raise UserError(f"--batch_size {args.batch_size} is larger than the number of images "
                        f"({len(paths)}) in {args.img_path}")
    engine = create_engine(args.backend, args.model_dir, device=args.device,
                           cpu_threads=args.cpu_threads, enable_mkldnn=args.enable_mkldnn,
                           use_tensorrt=args.use_tensorrt, precision=args.precision,
                           max_batch_size=args.batch_size, image_size=size, gpu_id=args.gpu_id)
    timings = {key: [] for key in TIME_KEYS}
    maps, scores = [], []
    for index, start in enumerate(range(0, len(paths), args.batch_size)):
        chunk = paths[start:start + args.batch_size]
        t0 = time.perf_counter()
        batch = load_batch(chunk, size)
        t1 = time.perf_counter()
        amap, score = engine.run(batch)
        t2 = time.perf_counter()
        maps.append(amap[:, 0])
        scores.append(score)
        if index >= args.warmup:
            timings["preprocess_time"].append((t1 - t0) / len(chunk))
            timings["inference_time"].append((t2 - t1) / len(chunk))
    threshold = args.threshold if args.threshold is not None else deploy.get("threshold")
    maps, scores = np.concatenate(maps), np.concatenate(scores)
    rows, post_seconds = write_image_outputs(args.output_dir, paths, maps, scores, threshold,
                                             args.save_format)
    skipped = min(args.warmup * args.batch_size, len(post_seconds) - 1)
    timings["postprocess_time"] = post_seconds[skipped:]
    for path, score, label in rows:
        print(f"{score}\t{label or '-'}\t{path}")
    if args.benchmark:
        report_timings(args, deploy, engine, timings, len(paths))
    return rows


def report_timings(args, deploy, engine, timings, num_images):
    if not timings["inference_time"]:
        print(f"benchmark: every batch was warm-up (--warmup {args.warmup}); nothing timed")
        return
    median_ms = {k: 1000.0 * statistics.median(v) for k, v in timings.items()}
    print(f"benchmark model={deploy['model']} backend={args.backend} device={args.device} "
          f"mkldnn={args.enable_mkldnn and args.backend == 'paddle'} threads={args.cpu_threads} batch={args.batch_size} "
          f"precision={args.precision} images={num_images} | per image (median, ms): "
          + ", ".join(f"{k}: {v:.2f}" for k, v in median_ms.items()))
    try:
        import auto_log
    except ImportError:
        return
    size = deploy["image_size"]
    logger = auto_log.AutoLogger(
        model_name=deploy["model"], model_precision=args.precision, batch_size=args.batch_size,
        data_shape=f"3,{size},{size}", save_path=os.path.join(args.output_dir, "auto_log.txt"),
        inference_config=engine.config, pids=os.getpid(), process_name=None,
        gpu_ids=args.gpu_id if args.device == "gpu" else None, time_keys=list(TIME_KEYS), warmup=0)
    # Hand auto_log our per-image durations (it averages them) instead of re-timing.
    logger.times.times = {key: list(timings[key]) for key in TIME_KEYS}
    logger.times.total_time = [sum(t) for t in zip(*(timings[key] for key in TIME_KEYS))]
    logger.report()


@exit_on_user_error
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    set_cpu_threads(cpu_threads_from_argv(argv))
    run(parse_args(argv))


if __name__ == "__main__":
    main()
