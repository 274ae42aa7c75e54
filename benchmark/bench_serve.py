#!/usr/bin/env python
"""serve.py under load, against infer.py's batch throughput on the same export and machine.

    python benchmark/bench_serve.py                                   # builds a PaDiM export first
    python benchmark/bench_serve.py --model_dir inference/rd4ad_brick --levels 1,4,16

1. infer.py --batch_size --max_batch --benchmark true on the images: its per-image median
   read + preprocess + engine time (writing overlays left out: the strict baseline) and with
   writing outputs.
2. serve.py on a free 127.0.0.1 port (same threads, oneDNN, batches of up to --max_batch);
   at each concurrency of --levels, clients in this process post the images (raw bytes,
   keep-alive) for --requests requests or --seconds, whichever comes first: requests/s,
   p50/p99 latency, failures, mean batch size.
3. --soak requests at the highest level, the server's resident memory read after 100 and at
   the end (VmRSS and VmHWM, the peak, of the server and its engine process together).
4. The bad-request list while 4 clients keep a load running: each must get its status and the
   load must not fail.
The clients share the two cores with the server, as the line's software would on one machine.
"""
import argparse
import concurrent.futures
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from adkit.deploy.serving.client import ServiceClient, ServiceError  # noqa: E402
from machine import cpu_model  # noqa: E402


def build_export(work, image_size):
    """A PaDiM export of sample_data/brick (seconds to fit): the default model to serve."""
    out, folder = os.path.join(work, "train"), os.path.join(work, "padim_brick")
    for argv in (["main.py", "--model", "padim", "--mode", "train", "--data_dir", "sample_data", "--cls", "brick",
                  "--image_size", str(image_size), "--output_dir", out],
                 ["export_model.py", "--model", "padim", "--checkpoint_dir", os.path.join(out, "padim", "brick"),
                  "--save_dir", folder]):
        subprocess.run([sys.executable, *argv], cwd=ROOT, check=True, capture_output=True)
    return folder


def infer_baseline(args, work):
    """(read + engine images/s, with outputs images/s) from infer.py's --benchmark line."""
    proc = subprocess.run([sys.executable, "infer.py", "--model_dir", args.model_dir, "--img_path", args.img_path,
                           "--output_dir", os.path.join(work, "infer"), "--batch_size", str(args.max_batch),
                           "--cpu_threads", str(args.cpu_threads), "--benchmark", "true", "--warmup", "1",
                           "--save_format", "png"], cwd=ROOT, capture_output=True, text=True)
    line = next((l for l in proc.stderr.splitlines() if l.startswith("benchmark ")), None)
    if proc.returncode != 0 or line is None:
        sys.exit(f"infer.py failed: {proc.stderr.strip().splitlines()[-1:]}")
    ms = {k: float(v) for k, v in re.findall(r"(\w+_time): ([\d.]+)", line)}
    engine = ms["preprocess_time"] + ms["inference_time"]
    return 1000.0 / engine, 1000.0 / (engine + ms["postprocess_time"])


def paddle_version(metadata):
    for name in ("paddlepaddle", "paddlepaddle-gpu"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "?"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_kb(pid):
    """(VmRSS, VmHWM) in kB of the server ``pid`` plus its engine process (its children):
    the resident memory and the sum of each process's peak."""
    rss = peak = 0
    for each in [pid] + children(pid):
        with open(f"/proc/{each}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        rss += int(fields["VmRSS"].split()[0])
        peak += int(fields["VmHWM"].split()[0])
    return rss, peak


def children(pid):
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(c) for c in f.read().split()]
    return found


def load(client, images, clients, requests, seconds):
    """``requests`` posts (or until ``seconds``), ``clients`` at a time -> stats dict."""
    latencies, failures, batches = [], [], []
    lock = threading.Lock()
    counter = iter(range(requests))
    deadline = time.perf_counter() + seconds

    def worker():
        while time.perf_counter() < deadline:
            with lock:
                k = next(counter, None)
            if k is None:
                return
            start = time.perf_counter()
            try:
                answer = client.predict_bytes(images[k % len(images)])
                batches.append(answer["batch_size"])
            except (ServiceError, OSError) as err:
                failures.append(str(err))
                continue
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ordered = sorted(latencies)
    return {"done": len(latencies), "failed": len(failures), "rps": len(latencies) / wall,
            "p50": 1000 * ordered[len(ordered) // 2] if ordered else float("nan"),
            "p99": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else float("nan"),
            "batch": statistics.mean(batches) if batches else 0.0, "errors": failures[:3]}


def bad_requests(good, max_bytes):
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 2_000_000, 9)) + chunk(b"IEND", b""))
    return [("empty body", b"", 400), ("not an image", b"plain text", 400),
            ("truncated PNG", good[: len(good) // 2], 400),
            (f"30000x30000 PNG ({len(bomb)} bytes)", bomb, 413),
            ("body over --max_bytes", b"\0" * (max_bytes * 2), 413)]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", default=None, help="an export folder (default: build a PaDiM export)")
    parser.add_argument("--img_path", default=os.path.join(ROOT, "sample_data", "brick", "test"))
    parser.add_argument("--image_size", type=int, default=256, help="of the PaDiM export built by default")
    parser.add_argument("--cpu_threads", type=int, default=2)
    parser.add_argument("--max_batch", type=int, default=8)
    parser.add_argument("--levels", default="1,4,16", help="concurrent clients, comma-separated")
    parser.add_argument("--requests", type=int, default=400, help="requests per level at most")
    parser.add_argument("--seconds", type=float, default=60, help="seconds per level at most")
    parser.add_argument("--soak", type=int, default=5000, help="requests of the memory check")
    args = parser.parse_args()
    from importlib import metadata

    from adkit.core.image_io import collect_images

    with tempfile.TemporaryDirectory() as work:
        if args.model_dir is None:
            print("building a PaDiM export of sample_data/brick ...", file=sys.stderr, flush=True)
            args.model_dir = build_export(work, args.image_size)
        _, paths = collect_images(args.img_path)
        images = [open(p, "rb").read() for p in paths]
        print(f"{cpu_model()}; Paddle {paddle_version(metadata)}; {args.cpu_threads} threads; model "
              f"{args.model_dir}; {len(images)} images of {args.img_path}", flush=True)
        engine_rate, output_rate = infer_baseline(args, work)
        print(f"infer.py --batch_size {args.max_batch}: {engine_rate:.1f} images/s read + engine "
              f"({output_rate:.1f} with writing overlays and masks)", flush=True)

        port = free_port()
        log = open(os.path.join(work, "serve.log"), "w+")
        server = subprocess.Popen([sys.executable, "serve.py", "--model_dir", args.model_dir, "--port", str(port),
                                   "--cpu_threads", str(args.cpu_threads), "--max_batch", str(args.max_batch),
                                   "--max_queue", "256"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            client = ServiceClient(f"http://127.0.0.1:{port}")
            if not client.wait_ready(120):
                log.seek(0)
                sys.exit("serve.py did not get ready: " + log.read()[-2000:])
            load(client, images, 4, 40, 30)  # warm-up
            print("\n| clients | requests | failed | requests/s | vs infer.py | p50 ms | p99 ms | mean batch |")
            print("|---:|---:|---:|---:|---:|---:|---:|---:|")
            for clients in (int(c) for c in args.levels.split(",")):
                stats = load(client, images, clients, args.requests, args.seconds)
                print(f"| {clients} | {stats['done']} | {stats['failed']} | {stats['rps']:.1f} | "
                      f"{stats['rps'] / engine_rate:.0%} | {stats['p50']:.1f} | {stats['p99']:.1f} | "
                      f"{stats['batch']:.2f} |", flush=True)
                for error in stats["errors"]:
                    print(f"  failure: {error}")

            top = max(int(c) for c in args.levels.split(","))
            first = load(client, images, top, 100, 600)
            after_100 = memory_kb(server.pid)
            rest = load(client, images, top, max(args.soak - 100, 0), 3600)
            after_all = memory_kb(server.pid)
            print(f"\nmemory: after 100 requests RSS {after_100[0] / 1024:.0f} MB (peak {after_100[1] / 1024:.0f}); "
                  f"after {first['done'] + rest['done']} RSS {after_all[0] / 1024:.0f} MB (peak "
                  f"{after_all[1] / 1024:.0f}), peak ratio {after_all[1] / after_100[1]:.3f}; "
                  f"failed {first['failed'] + rest['failed']}", flush=True)

            print("\nbad requests during a 4-client load:")
            stop = time.perf_counter() + 3600
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                background = pool.submit(load, client, images, 4, 200, stop)
                for what, body, expected in bad_requests(images[0], 20 * 1024 * 1024):
                    probe = ServiceClient(f"http://127.0.0.1:{port}")
                    try:
                        probe.predict_bytes(body)
                        got = 200
                    except ServiceError as err:
                        got = err.status
                    print(f"  {what}: {got} (expected {expected}){'' if got == expected else '  WRONG'}")
                stats = background.result()
            print(f"  the load meanwhile: {stats['done']} answered, {stats['failed']} failed")
        finally:
            server.terminate()
            code = server.wait(60)
            print(f"\nserve.py exit code after SIGTERM: {code}")


if __name__ == "__main__":
    main()
