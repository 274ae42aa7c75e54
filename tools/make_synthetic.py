#!/usr/bin/env python
r"""Turn a folder of good images into one MVTec-layout category with synthetic defects.

    python tools/make_synthetic.py --good_dir photos/ --output_dir synthetic_data/my_part \
        [--test_ratio 0.2] [--per_kind 4] [--kinds scratch,crack,...] [--seed 0] [--image_size N]
    python main.py --model efficientad_s --mode train --data_dir synthetic_data --cls my_part

Writes (--output_dir is the category folder):

    train/good/NNN.png                   the good images not held out
    test/good/NNN.png                    the held-out good images, pixels unchanged
    test/<kind>/NNN.png                  --per_kind defects of each kind, drawn on held-out images
    ground_truth/<kind>/NNN_mask.png     0/255, exactly the pixels each defect changed
    synthetic.json                       options, seed, the source image of every output file

A seeded permutation of the sorted images (found in subfolders too) holds out
round(n * --test_ratio) of them, at least 1, leaving at least 1 for training
(datasets.split_train_val(sorted paths, --test_ratio, --seed)); defects are only
ever drawn on held-out images, so no training image leaks into the defective test set. Defect i
of a kind is drawn on held-out image i mod n_held with numpy.random.default_rng([seed, k, i]),
k being the kind's index in adkit.evaluate.synthetic.KINDS: the same options give the same pixels, and
adding or dropping a kind leaves the others as they were.

Every image is read (and checked) before anything is written; the dataset is built in a hidden
folder beside --output_dir and renamed into place at the end, so a failed or interrupted run
leaves nothing behind. An existing --output_dir is refused, never overwritten nor merged.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from adkit.options.config import HelpFormatter, OneLineParser  # noqa: E402
from adkit.core.errors import UserError, exit_on_user_error, raise_if_bad  # noqa: E402
from adkit.core.image_io import find_images, read_rgb, resize_rgb, write_png  # noqa: E402
from adkit.core.io_utils import staged_folder, write_json  # noqa: E402
from adkit.evaluate.synthetic import DATASET_KINDS, KINDS, make_defect, parse_kinds  # noqa: E402
from adkit.datasets import split_train_val  # noqa: E402

MIN_SIDE = 32  # the smallest image the defect kinds can draw on


def parse_args(argv):
    parser = OneLineParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--good_dir", required=True, help="folder of good images (subfolders too)")
    parser.add_argument("--output_dir", required=True,
                        help="the category folder to create; must not exist yet")
    parser.add_argument("--test_ratio", type=float, default=0.2,
                        help="share of the good images held out for test/good and the defects, in (0, 1)")
    parser.add_argument("--per_kind", type=int, default=4, help="defect images per kind")
    parser.add_argument("--kinds", default=",".join(DATASET_KINDS),
                        help=f"comma-separated defect kinds, from: {', '.join(KINDS)}")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and of every defect")
    parser.add_argument("--image_size", type=int, default=None,
                        help="resize every image to N x N first (default: keep each image's size)")
    args = parser.parse_args(argv)
    args.kinds = parse_kinds(args.kinds, " (use --per_kind for more defects)")
    check_options(args)
    return args


def check_options(args):
    if not 0.0 < args.test_ratio < 1.0:
        raise UserError(f"--test_ratio must be between 0 and 1 (exclusive), got {args.test_ratio}")
    if args.per_kind < 1:
        raise UserError(f"--per_kind must be at least 1, got {args.per_kind}")
    if args.seed < 0:
        raise UserError(f"--seed must be 0 or more, got {args.seed}")
    if args.image_size is not None and args.image_size < MIN_SIDE:
        raise UserError(f"--image_size must be at least {MIN_SIDE}, got {args.image_size}")
    if os.path.lexists(args.output_dir):
        raise UserError(f"--output_dir {args.output_dir} already exists; give a new folder "
                        "(this tool never overwrites nor merges into an existing dataset)")
    if is_inside(args.output_dir, args.good_dir):
        # its images would be taken for good images by the next run on --good_dir
        raise UserError(f"--output_dir {args.output_dir} is inside --good_dir {args.good_dir}; "
                        "put it elsewhere")


def is_inside(path, folder):
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:  # different Windows drives
        return False


def load(path, image_size):
    image = read_rgb(path)
    if image_size is not None:
        return resize_rgb(image, image_size)
    if min(image.shape[:2]) < MIN_SIDE:
        raise UserError(f"{path}: image is {image.shape[1]}x{image.shape[0]}; defects need at least "
                        f"{MIN_SIDE}x{MIN_SIDE} (or pass --image_size)")
    return image


def check_all_readable(paths, image_size):
    """Read every image once before writing anything: one error line naming the bad ones."""
    bad = []
    for path in paths:
        try:
            load(path, image_size)
        except UserError as err:
            bad.append(str(err))
    raise_if_bad(bad)


def file_name(i, count):
    return f"{i:0{max(3, len(str(count - 1)))}d}"


def progress(message):
    print(message, file=sys.stderr, flush=True)


def copy_good(root, split, paths, image_size, good_dir):
    """Write the images at `paths` as <split>/good/NNN.png; returns (manifest entries, images)."""
    entries, images = [], []
    for i, path in enumerate(paths):
        image = load(path, image_size)
        name = f"{split}/good/{file_name(i, len(paths))}.png"
        write_png(os.path.join(root, name), image)
        entries.append({"file": name, "source": os.path.relpath(path, good_dir)})
        images.append(image)
    return entries, images


def draw_defects(root, kind, per_kind, seed, held_images, held_entries):
    """`per_kind` defects of `kind` on the held-out images, written with their masks."""
    kind_index = list(KINDS).index(kind)
    entries = []
    for i in range(per_kind):
        source = i % len(held_images)
        image, mask = make_defect(held_images[source], kind, np.random.default_rng([seed, kind_index, i]))
        stem = file_name(i, per_kind)
        name, mask_name = f"test/{kind}/{stem}.png", f"ground_truth/{kind}/{stem}_mask.png"
        write_png(os.path.join(root, name), image)
        write_png(os.path.join(root, mask_name), mask * np.uint8(255))
        entries.append({"file": name, "mask": mask_name, "kind": kind,
                        "drawn_on": held_entries[source]["file"], "source": held_entries[source]["source"],
                        "area": round(float(mask.mean()), 6)})
    return entries


def build(root, args, paths):
    """Write the whole category into `root`; returns its manifest (synthetic.json)."""
    train, held = split_train_val(sorted(paths), args.test_ratio, args.seed)
    progress(f"writing {len(train)} train/good and {len(held)} held-out test/good images")
    train_entries, _ = copy_good(root, "train", train, args.image_size, args.good_dir)
    held_entries, held_images = copy_good(root, "test", held, args.image_size, args.good_dir)
    defects = []
    for kind in args.kinds:
        progress(f"drawing {args.per_kind} {kind} defects")
        defects += draw_defects(root, kind, args.per_kind, args.seed, held_images, held_entries)
    manifest = manifest_of(args, train_entries, held_entries, defects)
    write_json(os.path.join(root, "synthetic.json"), manifest)
    return manifest


def manifest_of(args, train_entries, held_entries, defects):
    """synthetic.json: enough to tell where every file came from and to make it again."""
    return {
        "tool": "tools/make_synthetic.py",
        "arguments": {"good_dir": args.good_dir, "output_dir": args.output_dir, "test_ratio": args.test_ratio,
                      "per_kind": args.per_kind, "kinds": list(args.kinds), "seed": args.seed,
                      "image_size": args.image_size},
        "seed": args.seed,
        "kinds": list(args.kinds),
        "kind_index": {kind: list(KINDS).index(kind) for kind in args.kinds},
        "rng": "defect i of a kind: numpy.random.default_rng([seed, kind_index, i]) on held-out "
               "image i mod n_held; split: datasets.split_train_val(sorted paths, test_ratio, seed), "
               "the first round(n * test_ratio) of numpy.random.default_rng(seed).permutation(n) "
               "held out",
        "counts": {"train_good": len(train_entries), "test_good": len(held_entries),
                   "defects": {kind: args.per_kind for kind in args.kinds}},
        "train": train_entries,
        "test_good": held_entries,
        "defects": defects,
    }


@exit_on_user_error
def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    paths = find_images(args.good_dir, "--good_dir")
    if len(paths) < 2:
        raise UserError(f"--good_dir {args.good_dir}: found {len(paths)} image; need at least 2 "
                        "(one to train on, one to hold out for testing)")
    check_all_readable(paths, args.image_size)
    progress(f"read {len(paths)} good images from {args.good_dir}")  # after: errors stay one line
    with staged_folder(args.output_dir) as root:
        manifest = build(root, args, paths)
    counts = manifest["counts"]
    print(f"wrote {args.output_dir}: {counts['train_good']} train/good, {counts['test_good']} test/good, "
          f"{len(manifest['defects'])} defects ({len(args.kinds)} kinds x {args.per_kind})")


if __name__ == "__main__":
    main()
