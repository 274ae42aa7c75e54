"""Turn a COCO instance-segmentation export of defect photos into one MVTec-AD category folder.

    python tools/prepare_dataset.py --annotations instances.json --labeled_dir images/ \\
        --unlabeled_dir normal/ --output_dir DIR --train_ratio 0.8 [--seed 0]

Writes (then train and evaluate with `main.py --data_dir $(dirname DIR) --cls $(basename DIR)`):

    DIR/train/good/<name>.png                      the normal images not held out for testing
    DIR/test/good/<name>.png                       round(n * (1 - --train_ratio)) of the n normal
                                                   images, at least 1 and leaving 1 for training
                                                   (datasets.split_train_val with --seed)
    DIR/test/<defect_type>/<name>.png              each annotated image; defect_type = its COCO
                                                   category name as a folder name, `combined` when
                                                   an image has annotations of several categories
    DIR/ground_truth/<defect_type>/<name>_mask.png 0/255, image size, union of its annotations
    DIR/conversion.json                            counts, skipped annotations and why, arguments

Masks come from polygons, uncompressed RLE or COCO's compressed RLE strings (decoded here, no
pycocotools needed). Annotations without a usable mask (bbox only, degenerate polygons, empty
masks, unknown image or category) are skipped and reported, and so are labeled images left with
no annotation (they are neither clearly good nor usable as defects). Every input is checked
before anything is written; the folder is built under a hidden temporary name and renamed into
place at the end, so a failed or interrupted run leaves nothing behind. DIR must not exist.
"""
import json
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from adkit.options.config import HelpFormatter, OneLineParser  # noqa: E402
from adkit.core.errors import UserError, exit_on_user_error, raise_if_bad  # noqa: E402
from adkit.core.image_io import find_images, read_rgb, write_png  # noqa: E402
from adkit.core.io_utils import staged_folder, write_json  # noqa: E402
from adkit.datasets import split_train_val  # noqa: E402

COMBINED = "combined"  # MVTec's folder for images showing several kinds of defect
RESERVED_FOLDERS = ("good",)  # a defect type named so would pass defects off as good parts
MAX_COORDINATE = 2.0 ** 30  # vertices are drawn as int32; beyond this is no real annotation

# Skip reasons (keys of conversion.json's "skipped_annotation_counts").
NO_SEGMENTATION = "no segmentation (bbox only)"
DEGENERATE_POLYGON = "degenerate polygon (fewer than 3 points or zero area)"
EMPTY_MASK = "empty mask (zero area inside the image)"
UNKNOWN_IMAGE = "image_id not in images"
UNKNOWN_CATEGORY = "category_id not in categories"


def log(message):
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Masks: polygons and RLE -> {0,1} uint8 HxW. Malformed data raises ValueError (the caller adds
# which annotation); data that is well-formed but gives no mask raises SkipAnnotation.

class SkipAnnotation(Exception):
    """The annotation is valid COCO but yields no usable mask; the message is the reason."""


def rounded_vertices(polygon):
    """Flat [x1, y1, x2, y2, ...] -> Nx2 int32 pixel positions (round half up, not to even)."""
    return np.floor(np.asarray(polygon, np.float64).reshape(-1, 2) + 0.5).astype(np.int32)


def is_degenerate(polygon):
    """Fewer than 3 points, an odd number of coordinates, or no area (all points on a line)."""
    if len(polygon) < 6 or len(polygon) % 2:
        return True
    x, y = np.asarray(polygon, np.float64).reshape(-1, 2).T
    twice_area = np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))  # shoelace formula
    return twice_area == 0


def check_polygon_numbers(polygon, height, width):
    """Malformed coordinates are an error (not a skip): the file is broken, not the polygon."""
    if not isinstance(polygon, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in polygon):
        raise ValueError("a polygon must be a flat list of numbers [x1, y1, x2, y2, ...]")
    values = np.asarray(polygon, np.float64)
    if not np.isfinite(values).all():
        raise ValueError("polygon has a non-finite coordinate")
    if values.size and np.abs(values).max() > MAX_COORDINATE:
        raise ValueError(f"polygon coordinate {np.abs(values).max():g} is out of range "
                         f"(the image is {width}x{height})")


def polygon_mask(polygons, height, width):
    """Union of the polygons' pixels. Pixel convention: vertex (x, y) is rounded to the pixel in
    column round(x), row round(y), and a pixel is in the mask if it is inside the polygon or on
    its boundary (cv2.fillPoly fills the interior; cv2.polylines adds the edges so thin or
    concave parts keep them too). So [1,1, 3,1, 3,2, 1,2] covers columns 1..3 of rows 1..2,
    which can be one pixel wider than pycocotools' area-based rasterisation."""
    if polygons and all(isinstance(v, (int, float)) for v in polygons):
        polygons = [polygons]  # some exporters write one polygon without the outer list
    for polygon in polygons:
        check_polygon_numbers(polygon, height, width)
    usable = [p for p in polygons if not is_degenerate(p)]
    if not usable:
        raise SkipAnnotation(DEGENERATE_POLYGON)
    mask = np.zeros((height, width), np.uint8)
    for polygon in usable:  # one call each: one fillPoly of several is even-odd (overlaps = holes)
        points = rounded_vertices(polygon)
        cv2.fillPoly(mask, [points], 1)
        cv2.polylines(mask, [points], isClosed=True, color=1)
    return mask


def decode_rle_string(text):
    """COCO's compressed RLE counts (pycocotools' rleFrString): each character minus 48 holds 5
    data bits; 0x20 says more characters follow, 0x10 in the last one is the sign bit. From the
    fourth count on (index > 2, as in maskApi.c) a value is a delta to the count two before."""
    counts, value, shift = [], 0, 0
    for char in text:
        code = ord(char) - 48
        if not 0 <= code < 64:
            raise ValueError(f"compressed RLE has a character {char!r} outside '0'..'o'")
        value |= (code & 0x1F) << shift
        shift += 5
        if code & 0x20:
            continue
        if code & 0x10:
            value -= 1 << shift  # sign-extend the last chunk
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
        value, shift = 0, 0
    if shift:
        raise ValueError("compressed RLE ends in the middle of a number")
    return counts


def check_rle_counts(counts):
    if not all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
        raise ValueError("RLE counts must be integers")
    if any(c < 0 for c in counts):
        raise ValueError("RLE has a negative run length")


def counts_to_mask(counts, height, width):
    """Runs alternate 0, 1, 0, ... starting with zeros, over the pixels in column-major order."""
    total = sum(counts)
    if total != height * width:
        raise ValueError(f"RLE runs cover {total} pixels but the image has {height}x{width} = "
                         f"{height * width}")
    values = (np.arange(len(counts)) % 2).astype(np.uint8)
    flat = np.repeat(values, np.asarray(counts, np.int64))
    return flat.reshape((height, width), order="F")


def rle_mask(rle, height, width):
    size = rle.get("size")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) for s in size)):
        raise ValueError('RLE needs "size": [height, width]')
    if size != [height, width]:
        raise ValueError(f"RLE size {size} does not match the image's [height, width] "
                         f"[{height}, {width}]")
    counts = rle.get("counts")
    if isinstance(counts, str):
        counts = decode_rle_string(counts)
    elif not isinstance(counts, list):
        raise ValueError('RLE "counts" must be a list of run lengths or a compressed string')
    check_rle_counts(counts)
    return counts_to_mask(counts, height, width)


def annotation_mask(segmentation, height, width):
    """{0,1} uint8 HxW mask of one annotation's ``segmentation`` (polygons or RLE)."""
    if segmentation is None or segmentation == [] or segmentation == {}:
        raise SkipAnnotation(NO_SEGMENTATION)
    if isinstance(segmentation, list):
        mask = polygon_mask(segmentation, height, width)
    elif isinstance(segmentation, dict):
        mask = rle_mask(segmentation, height, width)
    else:
        raise ValueError("segmentation must be a list of polygons or an RLE object")
    if not mask.any():
        raise SkipAnnotation(EMPTY_MASK)
    return mask


# ---------------------------------------------------------------------------------------------
# Reading and checking the COCO file

@dataclass
class LabeledImage:
    image_id: object
    file_name: str
    path: str
    coco_hw: tuple  # (height, width) the COCO file claims, None values when it does not say
    annotations: list = field(default_factory=list)  # (annotation, category folder), kept ones
    hw: tuple = None  # the decoded file's (height, width)


def load_coco(path):
    if not os.path.isfile(path):
        raise UserError(f"--annotations {path}: file not found")
    try:
        with open(path, encoding="utf-8") as f:
            coco = json.load(f)
    except json.JSONDecodeError as err:
        raise UserError(f"--annotations {path}: not valid JSON ({err})") from None
    except UnicodeDecodeError:
        raise UserError(f"--annotations {path}: not a UTF-8 text file (expected COCO JSON)"
                        ) from None
    if not isinstance(coco, dict):
        raise UserError(f"--annotations {path}: expected a COCO object with images, annotations "
                        "and categories")
    missing = [key for key in ("images", "annotations", "categories")
               if not isinstance(coco.get(key), list)]
    if missing:
        raise UserError(f"--annotations {path}: missing {', '.join(repr(k) for k in missing)} "
                        "(expected COCO lists: images, annotations, categories)")
    return coco


def require_keys(entry, keys, where):
    if not isinstance(entry, dict) or any(key not in entry for key in keys):
        raise UserError(f"{where}: expected an object with {', '.join(keys)}")
    for key in keys:
        if key.endswith("id") and not isinstance(entry[key], (int, str)):
            raise UserError(f"{where}: {key} must be a number or a string, got {entry[key]!r}")


def portable_relpath(file_name):
    """COCO file names may use Windows separators; both work as subfolders of --labeled_dir."""
    return file_name.replace("\\", "/").lstrip("/")


def parse_images(coco, annotations_path, labeled_dir):
    """image id -> LabeledImage; ids and file names must be unique."""
    images, seen_names = {}, set()
    for i, entry in enumerate(coco["images"]):
        where = f"{annotations_path}: images[{i}]"
        require_keys(entry, ("id", "file_name"), where)
        if not isinstance(entry["file_name"], str) or not entry["file_name"]:
            raise UserError(f"{where}: file_name must be a non-empty string")
        image_id, rel = entry["id"], portable_relpath(entry["file_name"])
        if image_id in images:
            raise UserError(f"{where}: image id {image_id!r} is used twice")
        if rel in seen_names:
            raise UserError(f"{where}: file_name {entry['file_name']!r} is listed twice")
        seen_names.add(rel)
        images[image_id] = LabeledImage(image_id, entry["file_name"],
                                        os.path.join(labeled_dir, rel),
                                        (entry.get("height"), entry.get("width")))
    return images


def category_folders(coco, annotations_path):
    """category id -> folder name (the COCO name made safe for every file system)."""
    names = {}
    for i, entry in enumerate(coco["categories"]):
        where = f"{annotations_path}: categories[{i}]"
        require_keys(entry, ("id", "name"), where)
        if entry["id"] in names:
            raise UserError(f"{where}: category id {entry['id']!r} is used twice")
        names[entry["id"]] = safe_folder_name(str(entry["name"]), entry["id"])
    return names


def safe_folder_name(name, category_id):
    """Lower case, runs of anything but letters, digits, '.', '-' and '_' -> '_' (letters of any
    script stay: a Chinese defect name is a fine folder name)."""
    folder = re.sub(r"[^\w.-]+", "_", name.strip().lower()).strip("._-")
    return folder or f"category_{category_id}"


def check_category_folders(used, names_by_id, annotations_path):
    """The categories that get a folder: none reserved, no two sharing one folder."""
    by_folder = {}
    for category_id in sorted(used, key=str):
        folder = names_by_id[category_id]
        if folder in RESERVED_FOLDERS:
            raise UserError(f"{annotations_path}: category {category_id} is named {folder!r}, "
                            "which would mix defects into the good test images; rename it")
        if folder in by_folder:
            raise UserError(f"{annotations_path}: categories {by_folder[folder]} and {category_id} "
                            f"would both be written to test/{folder}; give them distinct names")
        by_folder[folder] = category_id


def candidate_annotations(coco, images, categories, annotations_path, skipped):
    """Annotations on a known image and category that carry a segmentation (the others go to
    ``skipped``), in file order."""
    candidates = []
    for i, ann in enumerate(coco["annotations"]):
        require_keys(ann, ("image_id", "category_id"), f"{annotations_path}: annotations[{i}]")
        reason = (UNKNOWN_IMAGE if ann["image_id"] not in images
                  else UNKNOWN_CATEGORY if ann["category_id"] not in categories
                  else NO_SEGMENTATION if ann.get("segmentation") in (None, [], {})
                  else None)
        if reason:
            skipped.append(skip_record(ann, i, images, reason))
        else:
            candidates.append((i, ann))
    return candidates


def skip_record(ann, index, images, reason):
    image = images.get(ann.get("image_id"))
    return {"annotation_id": ann.get("id", f"annotations[{index}]"),
            "image_id": ann.get("image_id"),
            "file_name": image.file_name if image else None, "reason": reason}


def check_labeled_files(needed, labeled_dir, annotations_path):
    """Every image an annotation needs must exist and decode; records its size."""
    missing = [f"{image.path}: file not found (listed in {annotations_path} images, expected "
               f"under --labeled_dir {labeled_dir})"
               for image in needed if not os.path.isfile(image.path)]
    raise_if_bad(missing)
    bad = []
    for image in needed:
        try:
            image.hw = read_rgb(image.path).shape[:2]
            check_coco_size(image, annotations_path)
        except UserError as err:
            bad.append(str(err))
    raise_if_bad(bad)


def check_coco_size(image, annotations_path):
    """The height and width the COCO file gives (either may be left out) must be the file's."""
    for name, claimed, actual in zip(("height", "width"), image.coco_hw, image.hw):
        if claimed is not None and claimed != actual:
            raise UserError(f"{image.path}: image is {image.hw[1]}x{image.hw[0]} (width x height) "
                            f"but {annotations_path} gives {name} {claimed}")


def keep_annotations_with_masks(candidates, images, categories, annotations_path, skipped):
    """Decode each candidate's mask once to sort out the empty ones; keeps the rest on its image."""
    for index, ann in candidates:
        image = images[ann["image_id"]]
        try:
            annotation_mask(ann["segmentation"], *image.hw)
        except SkipAnnotation as skip:
            skipped.append(skip_record(ann, index, images, str(skip)))
            continue
        except ValueError as err:
            raise UserError(f"{annotations_path}: annotation {ann.get('id', f'[{index}]')} on "
                            f"{image.file_name}: {err}") from None
        image.annotations.append((ann, categories[ann["category_id"]]))


def defect_type(image):
    types = {folder for _, folder in image.annotations}
    return types.pop() if len(types) == 1 else COMBINED


# ---------------------------------------------------------------------------------------------
# Normal images

def check_normal_images(paths):
    bad = []
    for path in paths:
        try:
            read_rgb(path)
        except UserError as err:
            bad.append(str(err))
    raise_if_bad(bad)


# ---------------------------------------------------------------------------------------------
# Output names

def output_stem(path):
    """File name without folders or extension; no leading dot (the loader skips hidden files)."""
    stem = os.path.splitext(os.path.basename(portable_relpath(path)))[0].lstrip(".")
    return stem or "image"


def unique_stems(paths):
    """Output stem per source path within one folder. Clashing names (a.jpg and a.png, or one
    name in two subfolders; letter case ignored, as macOS and Windows do) get _2, _3, ... in
    sorted path order, never taking a name another file has on its own."""
    own = {path: output_stem(path) for path in paths}
    reserved = {stem.casefold() for stem in own.values()}
    used, stems = set(), {}
    for path in sorted(paths):
        stem = own[path]
        if stem.casefold() in used:
            k = 2
            while f"{stem}_{k}".casefold() in reserved or f"{stem}_{k}".casefold() in used:
                k += 1
            stem = f"{stem}_{k}"
        used.add(stem.casefold())
        stems[path] = stem
    return stems


@dataclass
class OutputImage:
    source: str
    folder: str  # "train/good", "test/good" or "test/<defect type>"
    stem: str
    image: LabeledImage = None  # defect images only

    @property
    def relpath(self):
        return f"{self.folder}/{self.stem}.png"

    @property
    def mask_relpath(self):
        return f"ground_truth/{self.folder.split('/', 1)[1]}/{self.stem}_mask.png"


def layout(train, test_good, defect_images):
    """Every image to write, with its folder and clash-free name."""
    groups = {"train/good": {p: None for p in train}, "test/good": {p: None for p in test_good}}
    for image in defect_images:
        groups.setdefault(f"test/{defect_type(image)}", {})[image.path] = image
    outputs = []
    for folder, sources in sorted(groups.items()):
        stems = unique_stems(list(sources))
        outputs += [OutputImage(path, folder, stems[path], sources[path])
                    for path in sorted(sources)]
    return outputs


# ---------------------------------------------------------------------------------------------
# Writing

def union_mask(image):
    mask = np.zeros(image.hw, np.uint8)
    for ann, _ in image.annotations:
        mask |= annotation_mask(ann["segmentation"], *image.hw)
    return mask * np.uint8(255)


def write_outputs(root, outputs):
    for out in outputs:
        write_png(os.path.join(root, out.relpath), read_rgb(out.source))
        if out.image is not None:
            write_png(os.path.join(root, out.mask_relpath), union_mask(out.image))


# ---------------------------------------------------------------------------------------------
# Report

def count_by_folder(outputs):
    return dict(sorted(Counter(out.folder for out in outputs).items()))


def conversion_report(args, outputs, skipped, unannotated, also_labeled):
    return {
        "arguments": vars(args),
        "counts": count_by_folder(outputs),
        "skipped_annotation_counts": dict(sorted(Counter(s["reason"] for s in skipped).items())),
        "skipped_annotations": skipped,
        "labeled_images_without_annotations": unannotated,
        "normal_images_also_annotated": also_labeled,
        "files": [{"source": out.source, "output": out.relpath,
                   **({"mask": out.mask_relpath,
                       "annotation_ids": [ann.get("id") for ann, _ in out.image.annotations]}
                      if out.image else {})}
                  for out in outputs],
    }


def skip_summary(skipped, n_annotations):
    reasons = Counter(s["reason"] for s in skipped)
    return (f"skipped {len(skipped)} of {n_annotations} annotations: "
            + ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items())))


def summary_line(output_dir, outputs, n_skipped):
    counts = count_by_folder(outputs)
    defect_folders = [f for f in counts if f.startswith("test/") and f != "test/good"]
    n_defect = sum(counts[f] for f in defect_folders)
    return (f"wrote {output_dir}: {counts.get('train/good', 0)} train/good, "
            f"{counts.get('test/good', 0)} test/good, {n_defect} test images of "
            f"{len(defect_folders)} defect types ({n_skipped} annotations skipped)")


# ---------------------------------------------------------------------------------------------
# Command line

def parse_args(argv):
    parser = OneLineParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--annotations", required=True,
                        help="COCO instances JSON of the defect photos")
    parser.add_argument("--labeled_dir", required=True,
                        help="folder the COCO file_name entries are relative to")
    parser.add_argument("--unlabeled_dir", required=True,
                        help="folder of normal (defect-free) images, subfolders included")
    parser.add_argument("--output_dir", required=True,
                        help="the category folder to create (must not exist)")
    parser.add_argument("--train_ratio", required=True, type=float,
                        help="share of the normal images used for training, in (0, 1): "
                             "round(n * (1 - ratio)) of the n go to test/good, at least 1 each "
                             "side")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the train/test split (default: 0)")
    return parser.parse_args(argv)


def check_options(args):
    if not 0.0 < args.train_ratio < 1.0:
        raise UserError(f"--train_ratio must be in (0, 1), got {args.train_ratio}")
    if os.path.lexists(args.output_dir):
        raise UserError(f"--output_dir {args.output_dir}: exists; choose a new folder "
                        "(it is never overwritten or merged into)")
    if not os.path.isdir(args.labeled_dir):
        raise UserError(f"--labeled_dir {args.labeled_dir}: folder not found")
    if not any(not name.startswith(".") for name in os.listdir(args.labeled_dir)):
        raise UserError(f"--labeled_dir {args.labeled_dir}: folder is empty (expected the "
                        "annotated images)")


@exit_on_user_error
def main(argv=None):
    args = parse_args(argv)
    check_options(args)
    normal_paths = find_images(args.unlabeled_dir, "--unlabeled_dir")
    coco = load_coco(args.annotations)
    images = parse_images(coco, args.annotations, args.labeled_dir)
    categories = category_folders(coco, args.annotations)

    skipped = []
    candidates = candidate_annotations(coco, images, categories, args.annotations, skipped)
    needed = {id(images[ann["image_id"]]): images[ann["image_id"]] for _, ann in candidates}
    check_labeled_files(list(needed.values()), args.labeled_dir, args.annotations)
    keep_annotations_with_masks(candidates, images, categories, args.annotations, skipped)
    defect_images = [image for image in images.values() if image.annotations]
    used_categories = {ann["category_id"]
                       for image in defect_images for ann, _ in image.annotations}
    check_category_folders(used_categories, categories, args.annotations)
    check_normal_images(normal_paths)
    # Everything is valid from here on: the phases are logged (an error above stays one line).

    unannotated = sorted(image.file_name for image in images.values() if not image.annotations)
    labeled_files = {os.path.realpath(image.path) for image in defect_images}
    also_labeled = sorted(p for p in normal_paths if os.path.realpath(p) in labeled_files)
    log(f"checked {args.annotations}: {len(defect_images)} annotated images, "
        f"{len(normal_paths)} normal images")
    if skipped:
        log(skip_summary(skipped, len(coco["annotations"])))
    if unannotated:
        log(f"skipped {len(unannotated)} labeled images without annotations")
    if also_labeled:
        log(f"note: {len(also_labeled)} normal images are also annotated defect images")
    train, test_good = split_train_val(sorted(normal_paths), 1.0 - args.train_ratio, args.seed)
    log(f"split {len(normal_paths)} normal images (seed {args.seed}): {len(train)} train/good, "
        f"{len(test_good)} test/good")
    outputs = layout(train, test_good, defect_images)

    with staged_folder(args.output_dir) as root:
        log(f"writing {len(outputs)} images and {len(defect_images)} masks")
        write_outputs(root, outputs)
        write_json(os.path.join(root, "conversion.json"),
                   conversion_report(args, outputs, skipped, unannotated, also_labeled))
    print(summary_line(args.output_dir, outputs, len(skipped)))


if __name__ == "__main__":
    main()
