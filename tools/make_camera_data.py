#!/usr/bin/env python
r"""Make one camera-sized MVTec-layout category with defects of a chosen size in pixels.

    python tools/make_camera_data.py --output_dir output/camera/stone --size 1600x1200 --train 60 \
        --test_good 20 --test_defects 32 --defect_pixels 200-2000 [--texture gravel] \
        [--kinds scratch,crack,...] [--seed 0]
    python main.py --model patchcore --mode train --data_dir output/camera --cls stone

Writes (--output_dir is the category folder):

    train/good/NNN.png                   --train good photos
    test/good/NNN.png                    --test_good good photos
    test/<kind>/NNN.png                  --test_defects defective photos, spread over the kinds
    ground_truth/<kind>/NNN_mask.png     0/255, exactly the pixels each defect changed
    camera_data.json                     options, seed, every file's seeds, each defect's area

Good photos (--size is WIDTHxHEIGHT, as cameras state it; main.py's --image_size HxW is the
other way round) are made from a texture photo that ships with scikit-image, at about its own
pixel scale, so they look like a surface seen at the camera's native resolution: a mosaic of
random crops of the texture (flipped, turned by 90 degrees, scaled by 0.85-1.15), each the best
of a few at matching its neighbours and joined to them along the path where they differ least
(image quilting), feathered over a few pixels; then a smooth illumination gradient, a tint, and
a gain, an offset and sensor noise of the photo's own.

Each defect is drawn on a fresh good photo (not one of test/good) by
adkit.evaluate.synthetic.make_defect_in_window in a window sized so that the defect's mask covers
about a target area drawn log-uniformly in --defect_pixels; it is redrawn until the mask's area
is inside --defect_pixels. Defect i has kind i mod n_kinds of --kinds.

Seeded: photo i of a stream comes from numpy.random.default_rng([seed, stream, i]) (streams: 0
train, 1 test/good, 2 the good photo under defect i, 3 defect i itself), so the same options give
the same pixels. The dataset is built in a hidden folder beside --output_dir and renamed into
place at the end, so a failed or interrupted run leaves nothing behind; an existing
--output_dir is refused.
"""
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import skimage.data  # noqa: E402

from adkit.options.config import HelpFormatter, OneLineParser  # noqa: E402
from adkit.core.errors import UserError, exit_on_user_error  # noqa: E402
from adkit.core.image_io import write_png  # noqa: E402
from adkit.core.io_utils import staged_folder, write_json  # noqa: E402
from adkit.evaluate.synthetic import (DATASET_KINDS, KINDS, MAX_AREA, MIN_AREA,  # noqa: E402
                                      make_defect_in_window, parse_kinds)

# scikit-image's texture photos (CC0, 512x512 gray) and the RGB tint of each surface. Not
# brick: its courses, seen in perspective, cannot be joined across a seam (a patchwork).
TEXTURES = {"gravel": (1.0, 0.96, 0.88), "grass": (0.78, 1.0, 0.6)}
# missing_piece bites into its window's edge: inside a photo that edge is no part's edge, and
# the straight cut would give the defect away
DEFAULT_KINDS = tuple(kind for kind in DATASET_KINDS if kind != "missing_piece")
MIN_SIDE = 32  # the smallest window make_defect can draw in
MAX_PIXELS = 50_000_000  # beyond any camera the users have: a typo, not a photo
CELL, SEAM = 224, 48  # mosaic step and overlap in photo pixels (the texture is 512 px)
CANDIDATES = 8  # random crops tried for each place of the mosaic
FEATHER = 4  # pixels over which a seam is softened
SCALE = (0.85, 1.15)  # crops are resampled by about 1: the texture's own pixel scale
TRAIN, TEST_GOOD, DEFECT_SOURCE, DEFECT = range(4)  # the seed streams
# Median of mask area / window area of make_defect per kind (measured on gravel crops): the
# window that makes a defect of a given area likely.
TYPICAL_FRACTION = {"cut_paste": 0.033, "scratch": 0.009, "perlin_blotch": 0.028, "crack": 0.0073,
                    "stain": 0.028, "missing_piece": 0.034, "foreign_object": 0.02, "colour_shift": 0.035}
MAX_TRIES = 100


def parse_args(argv):
    parser = OneLineParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--output_dir", required=True,
                        help="the category folder to create; must not exist yet")
    parser.add_argument("--size", default="1600x1200",
                        help="photo size WIDTHxHEIGHT in pixels (width first, as cameras state it)")
    parser.add_argument("--train", type=int, default=60, help="good photos in train/good")
    parser.add_argument("--test_good", type=int, default=20, help="good photos in test/good")
    parser.add_argument("--test_defects", type=int, default=32,
                        help="defective photos, spread over the kinds")
    parser.add_argument("--defect_pixels", default="200-2000",
                        help="MIN-MAX: the area of every defect's mask, in photo pixels")
    parser.add_argument("--texture", default="gravel", choices=available_textures(),
                        help="the scikit-image texture photo the surface is made from")
    parser.add_argument("--kinds", default=",".join(DEFAULT_KINDS),
                        help=f"comma-separated defect kinds, from: {', '.join(KINDS)}")
    parser.add_argument("--seed", type=int, default=0, help="seed of every photo and defect")
    args = parser.parse_args(argv)
    args.width, args.height = parse_size(args.size)
    args.min_pixels, args.max_pixels = parse_range(args.defect_pixels)
    args.kinds = parse_kinds(args.kinds)
    check_options(args)
    return args


def available_textures():
    return [name for name in TEXTURES if hasattr(skimage.data, name)]


def parse_size(text):
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise UserError(f"--size {text!r}: expected WIDTHxHEIGHT in pixels, e.g. 1600x1200")
    width, height = map(int, parts)
    if min(width, height) < MIN_SIDE:
        raise UserError(f"--size {text}: each side must be at least {MIN_SIDE} pixels")
    if width * height > MAX_PIXELS:
        raise UserError(f"--size {text}: {width * height / 1e6:.0f} megapixels; at most "
                        f"{MAX_PIXELS // 1_000_000} are made")
    return width, height


def parse_range(text):
    parts = text.split("-")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise UserError(f"--defect_pixels {text!r}: expected MIN-MAX in pixels, e.g. 200-2000")
    low, high = (int(p) for p in parts)
    if not 1 <= low <= high:
        raise UserError(f"--defect_pixels {text}: expected 1 <= MIN <= MAX")
    return low, high


def check_options(args):
    for option in ("train", "test_good", "test_defects"):
        if getattr(args, option) < 1:
            raise UserError(f"--{option} must be at least 1, got {getattr(args, option)}")
    if args.seed < 0:
        raise UserError(f"--seed must be 0 or more, got {args.seed}")
    # make_defect covers MIN_AREA..MAX_AREA of its window, which lies between MIN_SIDE and the photo
    smallest = math.ceil(MIN_AREA * MIN_SIDE ** 2)
    largest = math.floor(MAX_AREA * min(args.width, args.height) ** 2)
    if args.max_pixels < smallest or args.min_pixels > largest:
        raise UserError(f"--defect_pixels {args.defect_pixels}: a defect on a {args.size} photo covers "
                        f"{smallest} to {largest} pixels; choose a range that overlaps these")
    if os.path.lexists(args.output_dir):
        raise UserError(f"--output_dir {args.output_dir} already exists; give a new folder "
                        "(this tool never overwrites nor merges into an existing dataset)")


def load_texture(name):
    """The texture as float32 gray with its own large-scale lighting divided out, so crops from
    its bright and dark sides meet without a step."""
    gray = getattr(skimage.data, name)().astype(np.float32)
    return gray / cv2.GaussianBlur(gray, (0, 0), 48) * gray.mean()


def random_crop(texture, side, rng):
    """A `side` x `side` crop of `texture` at a random position, scale, flip and turn."""
    source = min(int(round(side / rng.uniform(*SCALE))), min(texture.shape))
    top, left = rng.integers(0, np.array(texture.shape) - source + 1)
    crop = texture[top:top + source, left:left + source]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    crop = np.rot90(crop, int(rng.integers(4)))
    # Lanczos: of OpenCV's filters, the one that loses least of the fine detail at these factors
    return cv2.resize(np.ascontiguousarray(crop), (side, side), interpolation=cv2.INTER_LANCZOS4)


def cheapest_cut(cost):
    """Per row of `cost` (rows x cols), the column of the connected top-to-bottom path of least
    total cost (each step moves at most one column): where two crops differ least."""
    total = np.pad(cost, ((0, 0), (1, 1)), constant_values=np.inf)  # walls: the path stays inside
    for i in range(1, len(total)):
        above = total[i - 1]
        total[i, 1:-1] += np.minimum(np.minimum(above[:-2], above[1:-1]), above[2:])
    path = [int(np.argmin(total[-1]))]
    for i in range(len(total) - 2, -1, -1):
        path.append(path[-1] - 1 + int(np.argmin(total[i, path[-1] - 1:path[-1] + 2])))
    return np.array(path[::-1]) - 1


def seam_mask(old, new, overlap, top, left):
    """Where `new` replaces `old` (float in [0, 1]): beyond the cheapest cuts through the
    `overlap` with the crop above (`top`) and on the left (`left`), feathered over a few pixels."""
    side = len(new)
    keep_old = np.zeros((side, side), bool)
    inner = np.s_[FEATHER:SEAM - FEATHER]  # the cut stays clear of the strip's edges: no step there
    index = np.arange(side)
    if left:
        cut = FEATHER + cheapest_cut(((new - old) ** 2)[:, inner])
        keep_old |= index[None, :] < cut[:, None]
    if top:
        cut = FEATHER + cheapest_cut(((new - old) ** 2)[inner, :].T)
        keep_old |= index[:, None] < cut[None, :]
    mask = cv2.GaussianBlur((~keep_old).astype(np.float32), (0, 0), FEATHER / 2)
    return np.where(overlap, mask, 1.0)


def mosaic(texture, hw, rng):
    """Gray float32 surface of `hw` by image quilting (Efros & Freeman, 2001): crops laid on a
    grid of CELL px overlapping by SEAM px, each the best match to its neighbours of a few random
    crops, joined along the path where the two differ least; a straight blend would show."""
    h, w = hw
    side = CELL + SEAM
    rows, cols = (math.ceil((n + CELL - SEAM) / CELL) for n in hw)
    canvas = np.zeros((rows * CELL + SEAM, cols * CELL + SEAM), np.float32)
    for r in range(rows):
        for c in range(cols):
            at = np.s_[r * CELL:r * CELL + side, c * CELL:c * CELL + side]
            old = canvas[at]
            overlap = np.zeros((side, side), bool)
            overlap[:, :SEAM], overlap[:SEAM, :] = c > 0, r > 0
            crops = [random_crop(texture, side, rng) for _ in range(CANDIDATES)]
            new = min(crops, key=lambda crop: float(((crop - old)[overlap] ** 2).sum()))
            canvas[at] = old + seam_mask(old, new, overlap, r > 0, c > 0) * (new - old)
    # a random grid origin: the seams fall elsewhere in every photo
    top, left = rng.integers(0, CELL, 2)
    return canvas[top:top + h, left:left + w]


def illumination(hw, rng):
    """A smooth lighting field around 1: a linear ramp in a random direction and a broad
    fall-off from a random point near the centre, as a lamp beside the camera gives."""
    h, w = hw
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    yy, xx = (yy - h / 2) / max(h, w), (xx - w / 2) / max(h, w)  # the centre at 0, the long side 1
    angle = rng.uniform(0, 2 * np.pi)
    ramp = rng.uniform(0.05, 0.2) * (xx * np.cos(angle) + yy * np.sin(angle))
    cy, cx = rng.uniform(-0.15, 0.15, 2)
    falloff = rng.uniform(0.0, 0.3) * ((yy - cy) ** 2 + (xx - cx) ** 2)
    return 1 + ramp - falloff


def good_photo(texture, tint, hw, rng):
    """One good uint8 RGB photo of `hw`: the surface, lit, tinted, with the camera's own gain,
    offset and sensor noise (per channel, as on a colour sensor)."""
    surface = mosaic(texture, hw, rng) * illumination(hw, rng)
    gain, offset = rng.uniform(0.92, 1.08), rng.uniform(-8, 8)
    rgb = surface[..., None] * (gain * np.asarray(tint, np.float32)) + offset
    rgb += rng.uniform(1.0, 2.5) * rng.standard_normal(rgb.shape, np.float32)
    return np.rint(np.clip(rgb, 0, 255, out=rgb), out=rgb).astype(np.uint8)


def draw_defect(photo, kind, pixels, rng):
    """One defect of `kind` whose mask covers `pixels` = (MIN, MAX) photo pixels: each try aims
    at a log-uniform target area with the window that makes it likely for the kind. Returns
    (image, mask, record of the accepted try)."""
    low, high = pixels
    h, w = photo.shape[:2]
    fraction = TYPICAL_FRACTION.get(kind, math.sqrt(MIN_AREA * MAX_AREA))  # a new kind: the middle
    areas = []
    for tries in range(1, MAX_TRIES + 1):
        target = float(np.exp(rng.uniform(np.log(low), np.log(high + 1))))
        side = int(np.clip(round(math.sqrt(target / fraction)), MIN_SIDE, min(h, w)))
        image, mask = make_defect_in_window(photo, kind, rng, (side, side))
        area = int(mask.sum())
        if low <= area <= high:
            return image, mask, {"area": area, "target_area": round(target), "window": side, "tries": tries}
        areas.append(area)
    raise UserError(f"--defect_pixels {low}-{high}: no {kind} defect in range after {MAX_TRIES} tries "
                    f"on a {w}x{h} photo (areas {min(areas)}-{max(areas)}); widen the range")


def file_name(i, count):
    return f"{i:0{max(3, len(str(count - 1)))}d}"


def progress(message):
    print(message, file=sys.stderr, flush=True)


class Surface:
    """What every photo of the run is made from: the texture, its tint, and the size."""

    def __init__(self, args):
        self.texture = load_texture(args.texture)
        self.tint = TEXTURES[args.texture]
        self.hw = (args.height, args.width)

    def photo(self, key):
        return good_photo(self.texture, self.tint, self.hw, np.random.default_rng(key))


def write_good(root, split, stream, count, surface, seed):
    """`count` good photos as <split>/good/NNN.png, each written as soon as it is made."""
    entries = []
    for i in range(count):
        name = f"{split}/good/{file_name(i, count)}.png"
        key = [seed, stream, i]
        write_png(os.path.join(root, name), surface.photo(key))
        entries.append({"file": name, "rng": key})
    return entries


def defect_counts(args):
    """Defects per kind, for the kinds that get any (fewer defects than kinds leaves some out)."""
    counts = {kind: len(range(k, args.test_defects, len(args.kinds))) for k, kind in enumerate(args.kinds)}
    return {kind: n for kind, n in counts.items() if n}


def write_defects(root, args, surface):
    """--test_defects defects, defect i of kind i mod n_kinds on a fresh good photo."""
    counts, entries = defect_counts(args), []
    for i in range(args.test_defects):
        kind = args.kinds[i % len(args.kinds)]
        source_key, defect_key = [args.seed, DEFECT_SOURCE, i], [args.seed, DEFECT, i]
        image, mask, record = draw_defect(surface.photo(source_key), kind, (args.min_pixels, args.max_pixels),
                                          np.random.default_rng(defect_key))
        stem = file_name(i // len(args.kinds), counts[kind])
        name, mask_name = f"test/{kind}/{stem}.png", f"ground_truth/{kind}/{stem}_mask.png"
        write_png(os.path.join(root, name), image)
        write_png(os.path.join(root, mask_name), mask * np.uint8(255))
        entries.append({"file": name, "mask": mask_name, "kind": kind, **record,
                        "source_rng": source_key, "rng": defect_key})
    return entries


def build(root, args):
    """Write the whole category into `root`; returns its manifest (camera_data.json)."""
    surface = Surface(args)
    what = f"{args.width}x{args.height} {args.texture} photos"
    progress(f"making {args.train} train/good {what}")
    train = write_good(root, "train", TRAIN, args.train, surface, args.seed)
    progress(f"making {args.test_good} test/good {what}")
    test_good = write_good(root, "test", TEST_GOOD, args.test_good, surface, args.seed)
    progress(f"drawing {args.test_defects} defects of {args.defect_pixels} pixels "
             f"({', '.join(f'{n} {kind}' for kind, n in defect_counts(args).items())})")
    defects = write_defects(root, args, surface)
    manifest = manifest_of(args, train, test_good, defects)
    write_json(os.path.join(root, "camera_data.json"), manifest)
    return manifest


def manifest_of(args, train, test_good, defects):
    """camera_data.json: the options, and enough seeds to make any photo again."""
    return {
        "tool": "tools/make_camera_data.py",
        "arguments": {"output_dir": args.output_dir, "size": args.size, "train": args.train,
                      "test_good": args.test_good, "test_defects": args.test_defects,
                      "defect_pixels": args.defect_pixels, "texture": args.texture,
                      "kinds": list(args.kinds), "seed": args.seed},
        "seed": args.seed,
        "width": args.width,
        "height": args.height,
        "texture": args.texture,
        "defect_pixels": [args.min_pixels, args.max_pixels],
        "kinds": list(args.kinds),
        "rng": "good photo: Surface.photo(numpy.random.default_rng(rng)); defect: draw_defect on "
               "the good photo of source_rng with numpy.random.default_rng(rng); streams "
               f"[seed, {TRAIN}, i] train, [seed, {TEST_GOOD}, i] test/good, [seed, {DEFECT_SOURCE}, i] "
               f"the photo under defect i, [seed, {DEFECT}, i] defect i",
        "counts": {"train_good": len(train), "test_good": len(test_good), "defects": defect_counts(args)},
        "train": train,
        "test_good": test_good,
        "defects": defects,
    }


@exit_on_user_error
def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    with staged_folder(args.output_dir) as root:
        manifest = build(root, args)
    areas = [d["area"] for d in manifest["defects"]]
    print(f"wrote {args.output_dir}: {args.train} train/good, {args.test_good} test/good, "
          f"{args.test_defects} defects ({len(manifest['counts']['defects'])} kinds, "
          f"{min(areas)}-{max(areas)} pixels) "
          f"at {args.width}x{args.height} from {args.texture}")


if __name__ == "__main__":
    main()
