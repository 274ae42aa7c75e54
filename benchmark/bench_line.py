#!/usr/bin/env python
"""A line that runs several part types and learns from its inspectors (issue 35), measured.

    python benchmark/bench_line.py                 # a few minutes on two cores

1. Data and model: tools/make_camera_data.py makes a seeded part type (good photos, 30 real
   defects of five kinds); PatchCore is trained on it and exported; the export is copied ten
   times into one --model_repository.
2. Throughput: the hot model of the repository (serve.py --max_loaded 3, after cold loads of
   other models evicted it and it was loaded again) against a --model_dir server of the same
   export, at 16 clients, the two measured in turns: requests/s and the ratio of the medians. The cold requests' latencies (a request
   for a model not loaded: the load and the answer) are printed.
3. Reviews: --review-posts concurrent review posts (32 clients) to a server with --review_db;
   once each is acknowledged (201) the server is killed with SIGKILL and started again on the
   same file: how many acknowledged reviews are missing.
4. Learning from reviews: good parts of a new, acceptable appearance (the test good photos,
   brighter and bluer) are posted to the served model; the first ten it flags are reviewed as
   false alarms (and ten defects as confirmed or missed) through the review API, with the
   images kept; main.py --mode update makes version 2 from the review database. Then the
   false alarms on the held-out shifted good parts (those not reviewed) and the recall on all
   30 defects, before and after, at each version's own threshold (from its training side and
   the reviews; no test label chooses anything).
"""
import argparse
import concurrent.futures
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from adkit.deploy.serving.client import ServiceClient, ServiceError  # noqa: E402
from bench_serve import free_port, load, paddle_version  # noqa: E402
from machine import cpu_model  # noqa: E402

VERDICT_FOR = {"defect": "false_alarm", "good": "missed_defect"}  # a reviewed good part / defect
MODELS = 10
ROUNDS = 3


def step(*argv):
    done = subprocess.run([sys.executable, *map(str, argv)], cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{argv[0]} failed: {done.stderr.strip()[-2000:]}")
    return done.stdout


class Server:
    def __init__(self, work, *options):
        self.port = free_port()
        self.log = open(os.path.join(work, f"serve_{self.port}.log"), "w+")
        self.proc = subprocess.Popen([sys.executable, "serve.py", "--port", str(self.port), *map(str, options)],
                                     cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        if not ServiceClient(self.url).wait_ready(120):
            self.log.seek(0)
            sys.exit("serve.py did not get ready: " + self.log.read()[-2000:])

    def client(self, model=None):
        return ServiceClient(self.url, model=model)

    def stop(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)
        return self.proc.wait(60)


def images_of(folder):
    from adkit.core.image_io import collect_images

    return collect_images(folder)[1]


def throughput(args, work, repository, images):
    """The two servers side by side, measured in turns (ROUNDS each): another load on the
    machine then weighs on both alike."""
    options = ("--cpu_threads", args.cpu_threads, "--max_batch", 8, "--max_queue", 256)
    single = Server(work, "--model_dir", os.path.join(repository, "m0"), *options)
    repo = Server(work, "--model_repository", repository, "--max_loaded", 3, *options)
    try:
        cold = []
        for k in range(MODELS):  # every model once: the first three load, then each evicts the LRU
            start = time.perf_counter()
            repo.client(f"m{k}").predict_bytes(images[0])
            cold.append(time.perf_counter() - start)
        start = time.perf_counter()
        repo.client(f"m{MODELS - 1}").predict_bytes(images[0])
        warm = time.perf_counter() - start
        hot = repo.client("m0")  # evicted by now: loaded again by its warm-up
        load(hot, images, 4, 40, 30)
        load(single.client(), images, 4, 40, 30)
        alone, shared = [], []
        for _ in range(ROUNDS):
            alone.append(load(single.client(), images, 16, args.requests, 120))
            shared.append(load(hot, images, 16, args.requests, 120))
    finally:
        single.stop()
        repo.stop()
    print(f"\n| server (16 clients, {ROUNDS} turns of {args.requests} requests) | failed | requests/s per turn | "
          "median | p50 ms | p99 ms | mean batch |")
    print("|---|---:|---|---:|---:|---:|---:|")
    medians = []
    for name, runs in (("--model_dir (one model)", alone),
                       (f"--model_repository, {MODELS} models, --max_loaded 3: the hot one", shared)):
        middle = sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]
        medians.append(middle["rps"])
        per_turn = ", ".join(f"{r['rps']:.1f}" for r in runs)
        print(f"| {name} | {sum(r['failed'] for r in runs)} | {per_turn} | "
              f"{middle['rps']:.1f} | {middle['p50']:.1f} | {middle['p99']:.1f} | {middle['batch']:.2f} |")
    print(f"hot model of the repository: {medians[1] / medians[0]:.1%} of the one-model server's throughput "
          "(medians; goal >= 90%)")
    print(f"cold request (load the engine, then answer), {MODELS} models: median {statistics.median(cold):.2f} s, "
          f"max {max(cold):.2f} s; a warm request: {warm * 1000:.0f} ms", flush=True)


def reviews_survive_a_kill(args, work, repository, images):
    db = os.path.join(work, "kill.db")
    options = ("--model_repository", repository, "--max_loaded", 3, "--cpu_threads", args.cpu_threads,
               "--review_db", db)
    server = Server(work, *options)
    client = server.client("m0")
    answers = [client.predict_bytes(image) for image in images]
    posts = [(answers[k % len(answers)], k) for k in range(args.review_posts)]

    def post(item):
        answer, k = item
        try:
            return client.review(answer["request_id"], VERDICT_FOR[answer["label"]], f"post {k}")["review_id"]
        except (ServiceError, OSError):
            return None

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        acknowledged = [r for r in pool.map(post, posts) if r is not None]
    took = time.perf_counter() - start
    server.stop(signal.SIGKILL)
    server = Server(work, *options)
    try:
        status, _, body = server.client().request("GET", "/models/m0/reviews")
        import json

        stored = {row["id"] for row in json.loads(body)["reviews"]}
    finally:
        server.stop()
    print(f"\nreviews: {args.review_posts} posted by 32 clients in {took:.1f} s, {len(acknowledged)} acknowledged; "
          f"after kill -9 and a restart {len(stored)} stored, {len(set(acknowledged) - stored)} acknowledged "
          "ones lost", flush=True)


def shifted(source_paths, folder):
    """Good parts of a new, acceptable appearance: brighter and bluer."""
    import cv2
    import numpy as np

    os.makedirs(folder)
    out = []
    for k, source in enumerate(source_paths):
        image = cv2.imread(source).astype(np.int16)
        image += np.array([45, 20, 0], np.int16)  # BGR: +45 blue, +20 green
        path = os.path.join(folder, f"shifted_{k:03d}.png")
        cv2.imwrite(path, np.clip(image, 0, 255).astype(np.uint8))
        out.append(path)
    return out


def learning(args, work, checkpoint, data):
    from adkit import Predictor

    goods = shifted(images_of(os.path.join(data, "test", "good")), os.path.join(work, "shifted"))
    defects = [p for p in images_of(os.path.join(data, "test")) if os.sep + "good" + os.sep not in p]
    line = os.path.join(work, "line")
    shutil.copytree(checkpoint, os.path.join(line, "part"))
    db = os.path.join(work, "line.db")
    server = Server(work, "--model_repository", line, "--cpu_threads", args.cpu_threads, "--review_db", db,
                    "--keep_images", os.path.join(work, "kept"))
    client = server.client("part")
    reviewed = []
    try:
        for path in goods:
            answer = client.predict_file(path)
            if answer["label"] == "defect" and len(reviewed) < 10:
                client.review(answer["request_id"], "false_alarm", "new supplier, acceptable")
                reviewed.append(path)
        for path in defects[::3]:  # ten defects reviewed too: what the update must keep finding
            answer = client.predict_file(path)
            client.review(answer["request_id"], "defect_confirmed" if answer["label"] == "defect"
                          else "missed_defect")
    finally:
        server.stop()
    held_out = [p for p in goods if p not in reviewed]
    print(f"\nlearning from reviews: {len(reviewed)} reviewed false alarms of {len(goods)} shifted good parts, "
          f"{len(held_out)} held out; {len(defects)} defects", flush=True)
    new_version = os.path.join(work, "part_v2")
    updated = subprocess.run([sys.executable, "main.py", "--mode", "update", "--model_dir", checkpoint, "--reviews",
                              db, "--output_dir", new_version], cwd=ROOT, capture_output=True, text=True)
    print(updated.stdout.rstrip())
    if updated.returncode:
        print(updated.stderr.strip().splitlines()[-1])
        return
    rows = []
    for name, folder in (("version 1", checkpoint), ("version 2", new_version)):
        predictor = Predictor(folder, cpu_threads=args.cpu_threads)
        false_alarms = sum(predictor.predict(p).label == "defect" for p in held_out)
        found = sum(predictor.predict(p).label == "defect" for p in defects)
        rows.append((name, predictor.threshold.value, false_alarms, found))
        print(f"{name}: threshold {predictor.threshold.value:.4g}; false alarms on held-out shifted good parts "
              f"{false_alarms}/{len(held_out)}; defect recall {found}/{len(defects)} = {found / len(defects):.1%}",
              flush=True)
    (_, _, fa_before, found_before), (_, _, fa_after, found_after) = rows
    drop = 1 - fa_after / fa_before if fa_before else float("nan")
    print(f"false alarms on held-out shifted good parts: {fa_before} -> {fa_after} ({drop:.0%} fewer; goal >= 80%); "
          f"recall {found_before / len(defects):.1%} -> {found_after / len(defects):.1%} "
          f"({(found_after - found_before) * 100 / len(defects):+.1f} points; goal within 2)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image_size", type=int, default=256, help="PatchCore's input size")
    parser.add_argument("--cpu_threads", type=int, default=2)
    parser.add_argument("--requests", type=int, default=400, help="requests of each throughput measurement")
    parser.add_argument("--review-posts", dest="review_posts", type=int, default=1000)
    args = parser.parse_args()
    from importlib import metadata

    with tempfile.TemporaryDirectory() as work:
        data_root = os.path.join(work, "data")
        step("tools/make_camera_data.py", "--output_dir", os.path.join(data_root, "part"), "--size", "256x256",
             "--train", 30, "--test_good", 40, "--test_defects", 30, "--defect_pixels", "150-1500", "--seed", 0)
        out = os.path.join(work, "out")
        step("main.py", "--model", "patchcore", "--mode", "train", "--data_dir", data_root, "--cls", "part",
             "--image_size", args.image_size, "--output_dir", out)
        checkpoint = os.path.join(out, "patchcore", "part")
        repository = os.path.join(work, "repository")
        step("export_model.py", "--model", "patchcore", "--checkpoint_dir", checkpoint, "--save_dir",
             os.path.join(repository, "m0"))
        for k in range(1, MODELS):
            shutil.copytree(os.path.join(repository, "m0"), os.path.join(repository, f"m{k}"))
        images = [open(p, "rb").read() for p in images_of(os.path.join(data_root, "part", "test"))]
        print(f"{cpu_model()}; {os.cpu_count()} cores; Paddle {paddle_version(metadata)}; PatchCore at "
              f"{args.image_size} px, {args.cpu_threads} engine threads; {len(images)} test photos 256x256", flush=True)
        throughput(args, work, repository, images)
        reviews_survive_a_kill(args, work, repository, images[:50])
        learning(args, work, checkpoint, os.path.join(data_root, "part"))


if __name__ == "__main__":
    main()
