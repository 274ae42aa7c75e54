#!/usr/bin/env python
"""Check that exported-model runs score every image as the dygraph model does.

    python test_tipc/compare_predictions.py --reference DYGRAPH.csv RUN1.csv RUN2.csv ...

Each file is a df_test.csv (path, score, prediction, ...) from main.py --mode infer (the reference) or
infer.py. A run passes when it lists the same images and every score is finite and within
--rtol/--atol of the reference. A runtime can exit 0 and still return wrong numbers (seen with
oneDNN on some graphs), so the pipeline needs this check, not just exit codes.
Exit code: 0 all runs agree, 1 some run disagrees, 2 a file is missing or malformed.
"""
import argparse
import csv
import math
import os
import sys


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def read_scores(path):
    """[(image path, score)] in file order; exits 2 on a missing or malformed file."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        return [(row["path"], float(row["score"])) for row in rows]
    except (OSError, KeyError, TypeError, ValueError) as err:
        fail(f"{path}: not a readable df_test.csv ({err})")


def disagreement(reference, run, rtol, atol):
    """None when ``run`` matches ``reference``, else one line saying where it first differs."""
    if [p for p, _ in run] != [p for p, _ in reference]:
        return "lists different images"
    for (image, want), (_, got) in zip(reference, run):
        if not math.isfinite(got) or abs(got - want) > atol + rtol * abs(want):
            return f"{image}: score {got!r}, reference {want!r}"
    return None


def worst_relative_difference(reference, run):
    return max(abs(got - want) / max(abs(want), 1e-12) for (_, want), (_, got) in zip(reference, run))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", required=True, help="df_test.csv of main.py --mode infer")
    parser.add_argument("runs", nargs="+", help="df_test.csv files of infer.py runs")
    parser.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance on scores")
    parser.add_argument("--atol", type=float, default=1e-4, help="absolute tolerance on scores")
    args = parser.parse_args(argv)
    reference = read_scores(args.reference)
    if not reference:
        fail(f"{args.reference}: no rows")
    failures = 0
    for path in args.runs:
        run = read_scores(path)
        problem = disagreement(reference, run, args.rtol, args.atol)
        name = os.path.basename(os.path.dirname(path))
        if problem:
            failures += 1
            print(f"DIFFERS  {name}: {problem}")
        else:
            print(f"agrees   {name}: worst relative difference {worst_relative_difference(reference, run):.2e}")
    print(f"{len(args.runs) - failures} of {len(args.runs)} runs agree with {args.reference} "
          f"(rtol {args.rtol:g}, atol {args.atol:g})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
