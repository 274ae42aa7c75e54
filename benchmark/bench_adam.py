#!/usr/bin/env python
"""Does the optimiser slow down later ops? (On Paddle 3.3.1, 2 threads, convolutions after the
first step of the default Adam ran 5-6x slower; doc/speed.md has the measurement.)

Times a fixed conv forward before and after a few Adam steps, for the default Adam and for
use_multi_tensor=True (what adkit.train.training.make_adam uses), each in its own process (a slowdown
left by one would otherwise show in the next). Prints the after/before ratio.

    python benchmark/bench_adam.py --cpu_threads 2
"""
import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def time_forward(net, x, repeats):
    import paddle

    with paddle.no_grad():
        net(x)
        start = time.perf_counter()
        for _ in range(repeats):
            net(x)
    return (time.perf_counter() - start) / repeats


def measure(multi_tensor, repeats, steps):
    import paddle

    paddle.seed(0)
    net = paddle.nn.Sequential(paddle.nn.Conv2D(3, 128, 4), paddle.nn.ReLU(), paddle.nn.Conv2D(128, 256, 4))
    x = paddle.rand([1, 3, 128, 128])
    before = time_forward(net, x, repeats)
    opt = paddle.optimizer.Adam(1e-4, parameters=net.parameters(), use_multi_tensor=multi_tensor)
    for _ in range(steps):
        net(x).mean().backward()
        opt.step()
        opt.clear_grad()
    after = time_forward(net, x, repeats)
    return before, after


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu_threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--mode", choices=("plain", "multi_tensor"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode is None:  # each optimiser in a fresh process: a slowdown would outlive its run
        for mode in ("plain", "multi_tensor"):
            subprocess.run([sys.executable, __file__, "--mode", mode, "--cpu_threads",
                            str(args.cpu_threads), "--repeats", str(args.repeats), "--steps",
                            str(args.steps)], check=True)
        return
    from adkit.core.runtime import tune_process

    tune_process(args.cpu_threads)
    import paddle

    multi = args.mode == "multi_tensor"
    before, after = measure(multi, args.repeats, args.steps)
    print(f"paddle {paddle.__version__}, {args.cpu_threads} threads: "
          f"Adam(use_multi_tensor={multi!s:5}): forward {before * 1e3:7.1f} ms before, "
          f"{after * 1e3:7.1f} ms after {args.steps} steps -> ratio {after / before:.2f}", flush=True)


if __name__ == "__main__":
    main()
