#!/usr/bin/env python
r"""Run an exported model with Paddle Inference (or ONNX Runtime): overlays, masks, maps, scores.

    python infer.py --model_dir inference/patchcore_brick --img_path sample_data/brick/test \
        --device cpu --cpu_threads 2 --enable_mkldnn true --benchmark true --output_dir output/infer

Prints one line per image on stdout: score, label (defect/good) and path.

    python infer.py --model_dir inference/patchcore_brick --watch /line/camera1 \
        --results output/camera1.csv --move_done /line/camera1_done

scores images as the camera software drops them (see adkit/pipelines/watch.py) until SIGTERM.
"""
import os
import statistics
import sys

from adkit.core.errors import UserError, exit_on_user_error
from adkit.core.runtime import cpu_threads_from_argv, setup_logging, tune_process
from adkit.commands.engine_options import add_engine_options, predictor_options, str2bool

TIME_KEYS = ("preprocess_time", "inference_time", "postprocess_time")


def parse_args(argv):
    from adkit.options.config import HelpFormatter, OneLineParser
    from adkit.outputs.folders import SAVE_FORMAT_HELP, SAVE_FORMATS

    parser = OneLineParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model_dir", required=True, help="folder written by export_model.py, or a training folder "
                        "(<output_dir>/<model>/<cls>: its checkpoint runs in dygraph, slower)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--img_path",
                        help="an image file, or a folder of images (subfolders too: outputs mirror the tree)")
    source.add_argument("--watch", help="a folder to watch: score each complete image dropped into it, "
                        "append the results to --results, until SIGTERM / Ctrl-C")
    parser.add_argument("--results", default="output/watch_results.csv",
                        help="with --watch: the CSV results are appended to (also the ledger of what was scored)")
    parser.add_argument("--move_done", default=None, help="with --watch: move each scored image into this folder")
    parser.add_argument("--poll_seconds", type=float, default=1.0,
                        help="with --watch: seconds between two looks at the folder (a file is complete once "
                             "unchanged across two)")
    parser.add_argument("--output_dir", default="output/infer",
                        help="where overlays, masks, maps and df_test.csv go (replaced by each run)")
    parser.add_argument("--batch_size", type=int, default=1, help="images per engine run")
    add_engine_options(parser)
    parser.add_argument("--benchmark", type=str2bool, default=False,
                        help="report per-stage ms per image (after warm-up, median)")
    parser.add_argument("--warmup", type=int, default=2, help="batches excluded from --benchmark timing")
    parser.add_argument("--save_format", default="npy", choices=SAVE_FORMATS, help=SAVE_FORMAT_HELP)
    parser.add_argument("--verbose", action="store_true",
                        help="show Paddle's own C++ messages (normally silenced)")
    parser.add_argument("--skip_bad_images", action="store_true",
                        help="log unreadable images and go on (listed as skipped in df_test.csv)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise UserError(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.poll_seconds <= 0:
        raise UserError(f"--poll_seconds must be > 0, got {args.poll_seconds}")
    if args.watch and not os.path.isdir(args.watch):
        raise UserError(f"--watch {args.watch}: not a folder (expected the folder the camera writes to)")
    return args


def run(args):
    from adkit import Predictor

    if args.watch:
        from adkit.pipelines.watch import watch

        predictor = Predictor(args.model_dir, **predictor_options(args, 1))
        watch(predictor, args.watch, args.results, args.move_done, args.poll_seconds,
              echo=lambda line: print(line, flush=True))
        return
    from adkit.outputs.folders import RunFolder
    from adkit.deploy.predictor import predict_into_folder, refuse_bad_files
    from adkit.core.image_io import collect_images

    root, paths = collect_images(args.img_path)
    refuse_bad_files(paths, args.skip_bad_images)
    if args.batch_size > len(paths):
        raise UserError(f"--batch_size {args.batch_size} is larger than the number of images "
                        f"({len(paths)}) in {args.img_path}")
    run_folder = RunFolder(args.output_dir)  # refuses a folder it must not replace, early
    predictor = Predictor(args.model_dir, **predictor_options(args, args.batch_size))
    timings = predict_into_folder(predictor, args.img_path, root, paths, run_folder, args.save_format,
                                  args.batch_size, args.skip_bad_images, args.warmup)
    if args.benchmark:
        report_timings(args, predictor.model, predictor.engine, timings, len(paths),
                       predictor.image_size)


def report_timings(args, model, engine, timings, num_images, size):
    from adkit.deploy.exported import stored_precision

    if not timings["inference_time"]:
        print(f"benchmark: every batch was warm-up (--warmup {args.warmup}); nothing timed", file=sys.stderr)
        return
    # an int8 export runs int8 whatever --precision says (which only picks GPU fp16)
    precision = "int8" if stored_precision(args.model_dir) == "int8" else args.precision
    median_ms = {k: 1000.0 * statistics.median(v) for k, v in timings.items()}
    print(f"benchmark model={model} backend={args.backend} device={args.device} "
          f"mkldnn={args.enable_mkldnn and args.backend == 'paddle'} threads={args.cpu_threads} batch={args.batch_size} "
          f"precision={precision} images={num_images} | per image (median, ms): "
          + ", ".join(f"{k}: {v:.2f}" for k, v in median_ms.items()),
          file=sys.stderr)  # stdout holds the result lines only
    try:
        import auto_log
    except ImportError:
        return
    logger = auto_log.AutoLogger(
        model_name=model, model_precision=precision, batch_size=args.batch_size,
        data_shape=f"3,{size[0]},{size[1]}", save_path=os.path.join(args.output_dir, "auto_log.txt"),
        inference_config=engine.config, pids=os.getpid(), process_name=None,
        gpu_ids=args.gpu_id if args.device == "gpu" else None, time_keys=list(TIME_KEYS), warmup=0)
    # Hand auto_log our per-image durations (it averages them) instead of re-timing.
    logger.times.times = {key: list(timings[key]) for key in TIME_KEYS}
    logger.times.total_time = [sum(t) for t in zip(*(timings[key] for key in TIME_KEYS))]
    logger.report()


@exit_on_user_error
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    tune_process(cpu_threads_from_argv(argv), verbose="--verbose" in argv)
    args = parse_args(argv)
    setup_logging()
    run(args)


if __name__ == "__main__":
    main()
