#!/usr/bin/env python
"""The client step of test_serving_infer_python.sh: post every image under --img_path to a
running serve.py (--concurrency at a time), write the answers as a df_test.csv that
compare_predictions.py reads, and check that bad requests get their status meanwhile.

    python test_tipc/serving_client.py --url http://127.0.0.1:8866 --img_path sample_data/brick/test \
        --output out/df_test.csv --concurrency 4
Exit code: 0 every image answered 200 and every bad request its status, 1 otherwise.
"""
import argparse
import concurrent.futures
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from adkit.core.image_io import collect_images  # noqa: E402
from adkit.deploy.serving.client import ServiceClient, ServiceError  # noqa: E402

BAD_REQUESTS = [(b"", 400), (b"not an image", 400), (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, 400)]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--img_path", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--api_key", default=os.environ.get("ADKIT_API_KEY"))
    parser.add_argument("--ready_seconds", type=float, default=120)
    args = parser.parse_args()
    client = ServiceClient(args.url, args.api_key)
    if not client.wait_ready(args.ready_seconds):
        print(f"error: {args.url} not ready after {args.ready_seconds:g} s", file=sys.stderr)
        return 1
    _, paths = collect_images(args.img_path)
    with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
        answers = pool.map(lambda p: _answer(client, p), paths)
        bad = [(expected, _status(client, body)) for body, expected in BAD_REQUESTS]
        rows = list(zip(paths, answers))
    failed = [(p, a) for p, a in rows if isinstance(a, ServiceError)]
    wrong = [(expected, got) for expected, got in bad if got != expected]
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "score", "prediction", "regions", "batch_size"])
        for path, answer in rows:
            if not isinstance(answer, ServiceError):
                writer.writerow([path, repr(answer["score"]), answer["label"], len(answer["regions"]),
                                 answer["batch_size"]])
    for path, err in failed:
        print(f"{path}: {err}", file=sys.stderr)
    for expected, got in wrong:
        print(f"bad request answered {got}, expected {expected}", file=sys.stderr)
    print(f"{len(rows) - len(failed)}/{len(rows)} images answered; bad requests: "
          f"{len(bad) - len(wrong)}/{len(bad)} with the expected status; largest batch "
          f"{max((a['batch_size'] for _, a in rows if isinstance(a, dict)), default=0)}")
    return 1 if failed or wrong else 0


def _answer(client, path):
    try:
        return client.predict_file(path)
    except ServiceError as err:
        return err


def _status(client, body):
    try:
        client.predict_bytes(body)
        return 200
    except ServiceError as err:
        return err.status


if __name__ == "__main__":
    sys.exit(main())
