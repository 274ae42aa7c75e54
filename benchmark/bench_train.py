#!/usr/bin/env python
"""Training steps/s and eval images/s in dygraph, per model, on sample_data (methods fitted in
one pass, PatchCore and PaDiM, have no steps: their fit time is shown instead).

Speed does not depend on the weights, so encoders/teachers are random ('none'). Training speed
is the difference between a run of S+N steps and one of S steps (set-up and the per-run teacher
statistics / validation cancel out), divided by N.

``--compare_torch`` instead times the training step of EfficientAD-S (batch 1) and RD4AD (batch
16) against the same networks in torch eager (benchmark/torch_reference.py, same weights, same
threads), alternating Paddle and torch steps in one process so that a shared machine slows both
alike; it prints the first-step loss difference as a sanity check, and the torch step timed
alone in a fresh process without Paddle (a baseline slowed down by sharing the process is
flagged). torch is imported before Paddle. Without torch it times Paddle alone.

    python benchmark/bench_train.py --cpu_threads 2 --steps 10
    python benchmark/bench_train.py --compare_torch --steps 4 --rd4ad_backbone wide_resnet50_2
"""
import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from adkit.options.config import CPU_CONV_CHOICES  # noqa: E402
from adkit.options.registry import benchmark_cases, spec_for  # noqa: E402

CASES = benchmark_cases()  # label: (model, options)


def config(case, steps, image_size, cpu_conv="onednn"):
    from adkit.options.config import resolve_config

    model, options = CASES[case]
    argv = ["--model", model, "--mode", "train", "--steps", str(steps), "--image_size", str(image_size),
            "--save_interval", str(10**9), "--log_interval", str(10**9), "--device", "cpu",
            "--cpu_conv", cpu_conv]
    return resolve_config(argv + [word for key, value in options.items() for word in (f"--{key}", str(value))])


def fit_seconds(case, steps, image_size, data, cpu_conv):
    from adkit.options.registry import build_method

    method = build_method(config(case, steps, image_size, cpu_conv))
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        method.fit(data["train"], data["val"], folder)
        return time.perf_counter() - start, method


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu_threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model")
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--models", default=",".join(CASES), help="comma-separated subset of " + ",".join(CASES).replace("%", "%%"))  # argparse %-formats help
    parser.add_argument("--compare_torch", action="store_true",
                        help="time the training steps against torch eager (alternating)")
    parser.add_argument("--compare_models", default="efficientad_s,rd4ad",
                        help="with --compare_torch: efficientad_s and/or rd4ad")
    parser.add_argument("--rd4ad_backbone", default="wide_resnet50_2",
                        help="with --compare_torch: wide_resnet50_2 (the paper's) or resnet18")
    parser.add_argument("--cpu_conv", default="onednn", choices=CPU_CONV_CHOICES,
                        help="Paddle's training convolutions (main.py --cpu_conv)")
    parser.add_argument("--torch_alone", choices=("efficientad_s", "rd4ad"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_alone:  # --compare_torch's check: torch's step in a process without Paddle
        from compare_torch import run_torch_alone

        return run_torch_alone(args)
    torch = None
    if args.compare_torch:  # before Paddle and its library settings, as a torch user's script
        from compare_torch import import_torch_first

        torch = import_torch_first(args.cpu_threads)

    from adkit.core.runtime import tune_process

    tune_process(args.cpu_threads)
    import logging

    logging.getLogger("adkit").setLevel(logging.WARNING)
    if args.compare_torch:
        from compare_torch import compare

        compare(args, ROOT, torch)
        return
    from adkit.deploy.engines import DygraphEngine
    from adkit.evaluate.evaluation import run_inference
    from adkit.datasets import ImageDataset, MVTecCategory, TestDataset, split_train_val

    category = MVTecCategory(os.path.join(ROOT, "sample_data"), "gravel")
    train, val = split_train_val(category.train_paths(), 0.1, 0)
    data = {"train": ImageDataset(train, args.image_size), "val": ImageDataset(val, args.image_size)}
    test_set = TestDataset(category.test_items(), args.image_size)
    print(f"{'model':<16}{'train s/step':>14}{'steps/s':>10}{'eval img/s':>12}   "
          f"({args.cpu_threads} threads, {args.image_size}px, dygraph)")
    for case in args.models.split(","):
        if not spec_for(CASES[case][0]).trains:
            fit, method = fit_seconds(case, 1, args.image_size, data, args.cpu_conv)
            speed = f"{f'fit {fit:.1f} s':>14}{'-':>10}"
        else:
            warm = 2
            short, _ = fit_seconds(case, warm, args.image_size, data, args.cpu_conv)
            long, method = fit_seconds(case, warm + args.steps, args.image_size, data, args.cpu_conv)
            per_step = max(long - short, 1e-9) / args.steps
            speed = f"{per_step:>14.3f}{1 / per_step:>10.3f}"
        batch = config(case, 1, args.image_size)["eval_batch_size"]
        run = DygraphEngine(method.inference_net()).run
        run_inference(run, test_set, batch)  # warm-up
        start = time.perf_counter()
        run_inference(run, test_set, batch)
        images_per_s = len(test_set) / (time.perf_counter() - start)
        print(f"{case:<16}{speed}{images_per_s:>12.2f}")


if __name__ == "__main__":
    main()
