"""Make the small MVTec-AD-layout sample dataset (sample_data/) from scikit-image's CC0 textures.

Good images are randomly placed, slightly rotated/flipped, brightness-jittered crops of a texture
photo; train crops come from the top part of the photo and test crops from the bottom part, so
test-good images are never copies of training images. Defects are drawn procedurally on fresh test
crops, and each ground-truth mask is exactly the set of pixels the defect changed.

Deterministic: a fixed seed and a fixed order of random draws give the same bytes on every run
(with the same opencv build, whose PNG encoder writes the files).

    python tools/make_sample_data.py [--out DIR] [--force]
"""
import argparse
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import skimage.data

SEED = 20240617
IMAGE_SIZE = 256
SOURCE_SIZE = 512
# Train crops come from rows [0, 298) of the photo, test crops from rows [302, 512): disjoint
# areas (a 2-pixel margin each side keeps bilinear sampling from reading across the split).
TRAIN_ROWS = (0, 298)
TEST_ROWS = (302, SOURCE_SIZE)
CROP_SIDE = (168, 184)  # pixels of the photo resampled to IMAGE_SIZE
MAX_ANGLE_DEG = 6.0
DEFECT_AREA = (0.003, 0.05)  # allowed fraction of the image a defect may cover
# Level 6 + FILTERED: within 4% of the smallest files opencv writes, about 8x faster than level 9.
PNG_FLAGS = [cv2.IMWRITE_PNG_COMPRESSION, 6,
             cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_FILTERED]
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "sample_data"

# Gray level -> RGB gradient that turns the gray brick photo into red bricks with beige mortar.
BRICK_COLOURS = np.array([[45, 25, 20], [165, 75, 55], [225, 210, 190]], np.float32)
STAIN_COLOURS = np.array([[40, 150, 130], [70, 90, 190], [170, 160, 40]], np.float32)


@dataclass(frozen=True)
class Category:
    name: str
    texture: str  # name of the skimage.data function giving the photo
    colour: bool
    defects: tuple[str, ...]
    foreign_texture: str  # where "contamination" patches come from
    maskless_defects: tuple[str, ...] = ()
    n_train: int = 16
    n_test_good: int = 5
    n_per_defect: int = 3


CATEGORIES = (
    Category("brick", "brick", colour=True, defects=("scratch", "stain", "contamination", "misc"),
             foreign_texture="gravel", n_train=14, maskless_defects=("misc",)),
    Category("gravel", "gravel", colour=False, defects=("crack", "hole", "contamination"),
             foreign_texture="brick"),
)


# ---------------------------------------------------------------------------------------------
# Good images

def load_texture(name: str) -> np.ndarray:
    return getattr(skimage.data, name)().astype(np.float32)


def crop_texture(photo: np.ndarray, rows: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A rotated, maybe flipped square crop lying fully inside ``rows`` of the photo, 256x256."""
    side = rng.uniform(*CROP_SIDE)
    angle = np.deg2rad(rng.uniform(-MAX_ANGLE_DEG, MAX_ANGLE_DEG))
    flip_x, flip_y = rng.integers(0, 2, size=2) * 2 - 1
    half_extent = side / 2 * (abs(np.cos(angle)) + abs(np.sin(angle)))  # of the rotated square
    cx = rng.uniform(half_extent, photo.shape[1] - half_extent)
    cy = rng.uniform(rows[0] + half_extent, rows[1] - half_extent)
    # Inverse map: output pixel (u, v) -> photo point centre + R(angle) @ flip @ scale @ (u, v).
    scale = side / IMAGE_SIZE
    cos, sin = np.cos(angle), np.sin(angle)
    linear = np.array([[cos, -sin], [sin, cos]]) @ np.diag([flip_x * scale, flip_y * scale])
    offset = np.array([cx, cy]) - linear @ np.full(2, (IMAGE_SIZE - 1) / 2)
    matrix = np.hstack([linear, offset[:, None]])
    return cv2.warpAffine(photo, matrix, (IMAGE_SIZE, IMAGE_SIZE),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT)


def jitter_brightness(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    contrast, brightness = rng.uniform(0.9, 1.1), rng.uniform(-8.0, 8.0)
    mean = gray.mean()
    return (gray - mean) * contrast + mean + brightness


def colourise(gray: np.ndarray) -> np.ndarray:
    """Piecewise-linear gradient map through BRICK_COLOURS (dark, mid, light) -> HxWx3 RGB."""
    levels = np.array([0.0, 128.0, 255.0])
    return np.stack([np.interp(gray, levels, BRICK_COLOURS[:, c]) for c in range(3)], axis=-1)


def make_good(photo: np.ndarray, cat: Category, rows: tuple[int, int],
              rng: np.random.Generator) -> np.ndarray:
    gray = np.clip(jitter_brightness(crop_texture(photo, rows, rng), rng), 0, 255)
    image = colourise(gray) if cat.colour else gray
    return np.rint(image).clip(0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Defect shapes (boolean masks, hard edges so the mask is exact)

def blob_mask(rng: np.random.Generator, radius_range: tuple[float, float]) -> np.ndarray:
    """An irregular filled polygon (a wobbly ellipse) somewhere away from the border."""
    radius = rng.uniform(*radius_range)
    centre = rng.uniform(radius + 8, IMAGE_SIZE - radius - 8, size=2)
    n_vertices = 24
    theta = np.linspace(0, 2 * np.pi, n_vertices, endpoint=False)
    wobble = np.convolve(np.tile(rng.normal(0, 0.25, n_vertices), 3), np.ones(3) / 3, "same")
    r = radius * (1 + wobble[n_vertices:2 * n_vertices])
    aspect = rng.uniform(0.6, 1.0)
    rot = rng.uniform(0, np.pi)
    x, y = r * np.cos(theta), r * aspect * np.sin(theta)
    pts = np.stack([centre[0] + x * np.cos(rot) - y * np.sin(rot),
                    centre[1] + x * np.sin(rot) + y * np.cos(rot)], axis=1)
    return _fill(pts)


def curve_mask(rng: np.random.Generator, thickness: int) -> np.ndarray:
    """A gently bent line (quadratic Bezier), like a scratch."""
    start = rng.uniform(30, IMAGE_SIZE - 30, size=2)
    direction = rng.uniform(0, 2 * np.pi)
    length = rng.uniform(90, 170)
    end = np.clip(start + length * np.array([np.cos(direction), np.sin(direction)]), 5,
                  IMAGE_SIZE - 5)
    bend = (start + end) / 2 + rng.normal(0, length * 0.15, size=2)
    t = np.linspace(0, 1, 40)[:, None]
    pts = (1 - t) ** 2 * start + 2 * (1 - t) * t * bend + t ** 2 * end
    return _polyline(pts, thickness)


def crack_mask(rng: np.random.Generator) -> np.ndarray:
    """A jagged random walk with one side branch."""
    mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), bool)
    point = rng.uniform(60, IMAGE_SIZE - 60, size=2)
    heading = rng.uniform(0, 2 * np.pi)
    walk = [point]
    for _ in range(rng.integers(14, 20)):
        heading += rng.normal(0, 0.45)
        walk.append(np.clip(walk[-1] + 7 * np.array([np.cos(heading), np.sin(heading)]), 2,
                            IMAGE_SIZE - 3))
    walk = np.array(walk)
    mask |= _polyline(walk, thickness=3)
    branch_start = walk[rng.integers(3, len(walk) - 3)]
    branch_heading = heading + rng.choice([-1, 1]) * rng.uniform(0.6, 1.2)
    branch = [branch_start]
    for _ in range(6):
        branch_heading += rng.normal(0, 0.4)
        branch.append(np.clip(branch[-1] + 6 * np.array([np.cos(branch_heading),
                                                         np.sin(branch_heading)]), 2,
                              IMAGE_SIZE - 3))
    return mask | _polyline(np.array(branch), thickness=2)


def _fill(pts: np.ndarray) -> np.ndarray:
    canvas = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    cv2.fillPoly(canvas, [np.rint(pts).astype(np.int32)], 1, lineType=cv2.LINE_8)
    return canvas.astype(bool)


def _polyline(pts: np.ndarray, thickness: int) -> np.ndarray:
    canvas = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    cv2.polylines(canvas, [np.rint(pts).astype(np.int32)], False, 1, thickness=thickness,
                  lineType=cv2.LINE_8)
    return canvas.astype(bool)


def smooth_noise(rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Zero-mean, unit-std noise varying over about ``sigma`` pixels."""
    field = cv2.GaussianBlur(rng.normal(size=(IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32),
                             (0, 0), sigma)
    return (field - field.mean()) / field.std()


# ---------------------------------------------------------------------------------------------
# Defect appearance: each returns (changed float image, region); pixels outside region untouched

def _per_pixel(values: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Broadcast an HxW factor against a gray (HxW) or RGB (HxWx3) image."""
    return values if image.ndim == 2 else values[..., None]


def scratch(image, rng, foreign):
    region = curve_mask(rng, thickness=int(rng.integers(2, 4)))
    target = 240.0 if rng.random() < 0.5 else 15.0
    return image * 0.3 + target * 0.7, region


def stain(image, rng, foreign):
    """A translucent coloured blob whose opacity varies smoothly (RGB images)."""
    region = blob_mask(rng, (14, 24))
    colour = STAIN_COLOURS[rng.integers(len(STAIN_COLOURS))]
    alpha = _per_pixel(np.clip(0.7 + 0.1 * smooth_noise(rng, 6), 0.5, 0.9), image)
    # Modulate by the local brightness so the texture stays visible through the stain.
    shading = image.mean(axis=-1, keepdims=True) / image.mean()
    return image * (1 - alpha) + colour * shading * alpha, region


def hole(image, rng, foreign):
    """A dark pit, darkest in the middle."""
    region = blob_mask(rng, (10, 17))
    depth = cv2.distanceTransform(region.astype(np.uint8), cv2.DIST_L2, 5)
    depth = depth / depth.max()
    return image * _per_pixel(0.35 - 0.25 * depth, image) + 5.0, region


def crack(image, rng, foreign):
    return image * 0.2, crack_mask(rng)


def contamination(image, rng, foreign):
    """A piece of a different texture, at a different scale, pasted into a blob."""
    region = blob_mask(rng, (14, 24))
    side = int(rng.integers(120, 200))
    y, x = rng.integers(0, SOURCE_SIZE - side, size=2)
    patch = cv2.resize(foreign[y:y + side, x:x + side], (IMAGE_SIZE, IMAGE_SIZE),
                       interpolation=cv2.INTER_AREA)
    patch = patch * 0.8 + 40.0  # lifted, narrower range: stands apart from the host
    return (patch if image.ndim == 2 else patch[..., None].repeat(3, axis=-1)), region


def misc(image, rng, foreign):
    """A small pit plus a short scratch: a mixed defect shipped without masks."""
    pitted, pit = hole(image, rng, foreign)
    scratched, line = scratch(image, rng, foreign)
    changed = np.where(_per_pixel(pit, image), pitted, image)
    return np.where(_per_pixel(line, image), scratched, changed), pit | line


DEFECTS = {fn.__name__: fn for fn in (scratch, stain, hole, crack, contamination, misc)}


def inject_defect(good: np.ndarray, kind: str, rng: np.random.Generator,
                  foreign: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (defective uint8 image, uint8 0/255 mask of exactly the changed pixels)."""
    for _ in range(50):  # redraw shapes whose area falls outside DEFECT_AREA
        changed, region = DEFECTS[kind](good.astype(np.float32), rng, foreign)
        if DEFECT_AREA[0] <= region.mean() <= DEFECT_AREA[1]:
            break
    else:
        raise RuntimeError(f"could not draw a '{kind}' defect of plausible size")
    changed = np.rint(changed).clip(0, 255).astype(np.uint8)
    out = np.where(_per_pixel(region, good), changed, good)
    # A region pixel that rounding left equal to the original would make the mask inexact:
    # push it by a visible step (away from the nearer end of the range).
    same = region & _differs(out, good, invert=True)
    push = np.where(good < 128, 24, -24).astype(np.int16)
    out[same] = (good[same].astype(np.int16) + push[same]).astype(np.uint8)
    assert np.array_equal(_differs(out, good), region)
    return out, region.astype(np.uint8) * 255


def _differs(a: np.ndarray, b: np.ndarray, invert: bool = False) -> np.ndarray:
    diff = a != b
    diff = diff if diff.ndim == 2 else diff.any(axis=-1)
    return ~diff if invert else diff


# ---------------------------------------------------------------------------------------------
# Writing

def write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, encoded = cv2.imencode(".png", pixels, PNG_FLAGS)
    if not ok:
        raise RuntimeError(f"PNG encoding failed for {path}")
    path.write_bytes(encoded.tobytes())


def write_category(root: Path, cat: Category, index: int) -> None:
    rng = np.random.default_rng([SEED, index])  # per category: adding one leaves others as they are
    photo = load_texture(cat.texture)
    foreign = load_texture(cat.foreign_texture)
    base = root / cat.name
    for i in range(cat.n_train):
        write_png(base / "train" / "good" / f"{i:03d}.png", make_good(photo, cat, TRAIN_ROWS, rng))
    for i in range(cat.n_test_good):
        write_png(base / "test" / "good" / f"{i:03d}.png", make_good(photo, cat, TEST_ROWS, rng))
    for kind in cat.defects:
        for i in range(cat.n_per_defect):
            image, mask = inject_defect(make_good(photo, cat, TEST_ROWS, rng), kind, rng, foreign)
            write_png(base / "test" / kind / f"{i:03d}.png", image)
            if kind not in cat.maskless_defects:
                write_png(base / "ground_truth" / kind / f"{i:03d}_mask.png", mask)


def readme_text() -> str:
    lines = [
        "# sample_data",
        "",
        "A tiny dataset in the MVTec AD folder layout, for smoke tests, CI and the quick-start.",
        "It is generated, not collected: do not edit it by hand. Regenerate it with",
        "",
        "    python tools/make_sample_data.py --force",
        "",
        "## Contents",
        "",
        "| category | channels | train/good | test/good | defect types (3 images each) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for cat in CATEGORIES:
        kinds = ", ".join(f"{k} (no masks)" if k in cat.maskless_defects else k
                          for k in cat.defects)
        lines.append(f"| {cat.name} | {'RGB' if cat.colour else 'gray'} | {cat.n_train} | "
                     f"{cat.n_test_good} | {kinds} |")
    lines += [
        "",
        f"All images are {IMAGE_SIZE}x{IMAGE_SIZE} PNG. Masks are single-channel PNGs of the same",
        "size, 0 = background and 255 = defect, and mark exactly the pixels the defect changed.",
        "`brick/test/misc` deliberately has no `ground_truth` folder: it exercises the case of",
        "a defect type scored with image-level metrics only.",
        "",
        "Good images are rotated, flipped, brightness-jittered crops of one photo; training crops",
        "come from its top rows and test crops from its bottom rows, so they never overlap. The",
        "brick photo is turned into colour with a gradient map. Defects (scratch, stain, hole,",
        "crack, contamination = a patch of another texture, misc = pit plus scratch) are drawn",
        "procedurally with a fixed random seed.",
        "",
        f"`{COCO_EXAMPLE}` holds brick's test defects as a COCO instances file (polygons, RLE and",
        "one bbox-only annotation), the input of `tools/prepare_dataset.py`:",
        "",
        f"    python tools/prepare_dataset.py --annotations sample_data/{COCO_EXAMPLE} \\",
        "        --labeled_dir sample_data/brick/test --unlabeled_dir sample_data/brick/train/good \\",
        "        --output_dir coco_data/brick_coco --train_ratio 0.8",
        "",
        "## Sources and license",
        "",
        "Derived from two texture photos shipped inside the scikit-image package",
        "(`skimage.data.brick` and `skimage.data.gravel`, originally from CC0Textures), both",
        "released under the Creative Commons CC0 1.0 public-domain dedication. This derived",
        "dataset is likewise released under CC0 1.0.",
        "",
    ]
    return "\n".join(lines)


COCO_EXAMPLE = "brick_coco.json"


def coco_example(root: Path) -> dict:
    """brick's test defects as a COCO instances file, as a labelling tool would export them:
    each 8-connected part of a mask one annotation, polygons (outer contours) for scratches and
    contamination, uncompressed RLE for stains, and a bbox-only annotation for the maskless
    'misc' images (tools/prepare_dataset.py reports it as skipped). file_name is relative to
    brick/test."""
    kinds = ("scratch", "stain", "contamination")
    images, annotations = [], []
    for kind in kinds + ("misc",):
        for path in sorted((root / "brick" / "test" / kind).glob("*.png")):
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": f"{kind}/{path.name}",
                           "height": IMAGE_SIZE, "width": IMAGE_SIZE})
            if kind == "misc":
                annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                    "category_id": len(kinds) + 1, "bbox": [10, 10, 20, 20]})
                continue
            mask = cv2.imread(str(root / "brick" / "ground_truth" / kind / f"{path.stem}_mask.png"),
                              cv2.IMREAD_GRAYSCALE) > 0
            count, parts = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
            for part in range(1, count):
                region = (parts == part).astype(np.uint8)
                if kind == "stain":
                    flat = region.flatten(order="F")  # COCO RLE runs are column-major
                    edges = np.flatnonzero(np.diff(flat)) + 1
                    runs = np.diff(np.concatenate(([0], edges, [flat.size])))
                    counts = ([0] if flat[0] else []) + runs.tolist()
                    segmentation = {"size": [IMAGE_SIZE, IMAGE_SIZE], "counts": counts}
                else:
                    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
                    segmentation = [c.reshape(-1).tolist() for c in contours if len(c) >= 3]
                    if not segmentation:
                        continue
                annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                    "category_id": kinds.index(kind) + 1, "iscrowd": 0,
                                    "segmentation": segmentation})
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(kinds + ("misc",))]
    return {"images": images, "annotations": annotations, "categories": categories}


def generate(root: Path) -> None:
    for index, cat in enumerate(CATEGORIES):
        write_category(root, cat, index)
    (root / COCO_EXAMPLE).write_text(json.dumps(coco_example(root), separators=(",", ":")),
                                     encoding="utf-8")
    (root / "README.md").write_text(readme_text(), encoding="utf-8")


def replace_atomically(out: Path, force: bool) -> None:
    """Build into a temporary sibling folder, then swap it in, so no half dataset is ever left."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
    os.chmod(staging, _default_dir_mode())  # mkdtemp makes it private; the dataset is not
    try:
        generate(staging)
        if out.exists():
            if not force:  # re-checked: something may have appeared while we were generating
                raise FileExistsError(out)
            retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, retired / out.name)
            try:
                os.replace(staging, out)
            except OSError:
                os.replace(retired / out.name, out)  # put the old dataset back
                raise
            shutil.rmtree(retired)
        else:
            os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _default_dir_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument("--force", action="store_true",
                        help="replace the output folder if it already exists")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.force:
        parser.error(f"--out {args.out} already exists; pass --force to replace it")
    try:
        replace_atomically(args.out, args.force)
    except FileExistsError:
        parser.error(f"--out {args.out} appeared while generating; pass --force to replace it")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
