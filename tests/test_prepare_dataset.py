"""tools/prepare_dataset.py: COCO masks (polygons, RLE, compressed RLE) against hand-drawn masks,
and the command line end to end: the MVTec tree it writes, the seeded split, and one-line errors
that leave nothing behind."""
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))

import prepare_dataset as prep  # noqa: E402
from adkit.core.image_io import write_png  # noqa: E402
from adkit.datasets import split_train_val  # noqa: E402

H, W = 8, 10  # every labeled image in the end-to-end tests

# The 4x5 mask of the RLE tests, drawn by hand. Column-major it reads 0000 1100 1100 0000 0011:
# runs of 4 zeros, 2 ones, 2 zeros, 2 ones, 8 zeros, 2 ones.
SMALL_MASK = np.array([[0, 1, 1, 0, 0],
                       [0, 1, 1, 0, 0],
                       [0, 0, 0, 0, 1],
                       [0, 0, 0, 0, 1]], np.uint8)
SMALL_COUNTS = [4, 2, 2, 2, 8, 2]
# Worked out by hand from COCO's rules: 4, 2, 2 as they are, then deltas to two before:
# 2-2 = 0, 8-2 = 6, 2-2 = 0; each a single character chr(48 + value).
SMALL_STRING = "422060"


def encode_rle_string(counts):
    """Independent encoder of COCO's compressed counts (pycocotools' rleToString, in Python)."""
    chars = []
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift: a negative x ends at -1
            more = x != -1 if c & 0x10 else x != 0
            chars.append(chr(48 + (c | 0x20 if more else c)))
    return "".join(chars)


def runs_of(mask):
    """Column-major run lengths starting with zeros, straight from the pixels."""
    flat = mask.flatten(order="F")
    counts, value, run = [], 0, 0
    for pixel in flat:
        if pixel == value:
            run += 1
        else:
            counts.append(run)
            value, run = pixel, 1
    return counts + [run]


# ---------------------------------------------------------------------------------------------
# Masks

def test_polygon_rectangle_and_triangle_match_hand_drawn_masks():
    rectangle = prep.annotation_mask([[1, 1, 3, 1, 3, 2, 1, 2]], 4, 5)
    np.testing.assert_array_equal(rectangle, [[0, 0, 0, 0, 0],
                                              [0, 1, 1, 1, 0],
                                              [0, 1, 1, 1, 0],
                                              [0, 0, 0, 0, 0]])
    triangle = prep.annotation_mask([[0, 0, 4, 0, 0, 4]], 6, 6)  # boundary pixels included
    np.testing.assert_array_equal(triangle, [[1, 1, 1, 1, 1, 0],
                                             [1, 1, 1, 1, 0, 0],
                                             [1, 1, 1, 0, 0, 0],
                                             [1, 1, 0, 0, 0, 0],
                                             [1, 0, 0, 0, 0, 0],
                                             [0, 0, 0, 0, 0, 0]])


def test_polygon_vertices_round_half_up_and_parts_are_united():
    # 0.5 -> 1 and 2.6 -> 3: the same rectangle as integer vertices 1..3 x 1..2
    two_parts = [[0.5, 0.5, 2.6, 0.5, 2.6, 1.5, 0.5, 1.5], [4, 3, 4, 3, 4, 3]]  # 2nd: a point
    np.testing.assert_array_equal(prep.annotation_mask(two_parts, 4, 5),
                                  prep.annotation_mask([[1, 1, 3, 1, 3, 2, 1, 2]], 4, 5))


def test_overlapping_polygon_parts_do_not_cut_holes():
    parts = [[0, 0, 4, 0, 4, 4, 0, 4], [1, 1, 3, 1, 3, 3, 1, 3]]  # a square inside a square
    expected = np.zeros((6, 6), np.uint8)
    expected[:5, :5] = 1
    np.testing.assert_array_equal(prep.annotation_mask(parts, 6, 6), expected)


def test_uncompressed_rle_matches_hand_drawn_mask():
    mask = prep.annotation_mask({"counts": SMALL_COUNTS, "size": [4, 5]}, 4, 5)
    np.testing.assert_array_equal(mask, SMALL_MASK)
    assert runs_of(SMALL_MASK) == SMALL_COUNTS  # the hand-written runs are the drawing's


def test_compressed_rle_matches_hand_drawn_mask():
    assert encode_rle_string(SMALL_COUNTS) == SMALL_STRING
    mask = prep.annotation_mask({"counts": SMALL_STRING, "size": [4, 5]}, 4, 5)
    np.testing.assert_array_equal(mask, SMALL_MASK)


def test_compressed_rle_multi_character_and_negative_deltas():
    # By hand: 40 = 8 + 1*32 -> 'X' (8|0x20) then '1'; 3 -> '3'; 20 has the sign bit 0x10 set, so
    # it takes 'd' (20|0x20) then '0'; 1-3 = -2 -> 30 -> 'N'; 16-20 = -4 -> 28 -> 'L'.
    counts = [40, 3, 20, 1, 16]
    assert encode_rle_string(counts) == "X13d0NL"
    assert prep.decode_rle_string("X13d0NL") == counts
    mask = np.random.default_rng(0).random((9, 7)) < 0.4
    counts = runs_of(mask.astype(np.uint8))
    decoded = prep.annotation_mask({"counts": encode_rle_string(counts), "size": [9, 7]}, 9, 7)
    np.testing.assert_array_equal(decoded, mask)


@pytest.mark.parametrize("segmentation, reason", [
    (None, prep.NO_SEGMENTATION),
    ([], prep.NO_SEGMENTATION),
    ([[1, 1, 3, 1]], prep.DEGENERATE_POLYGON),          # two points
    ([[0, 0, 2, 2, 4, 4]], prep.DEGENERATE_POLYGON),    # on a line
    ([[20, 20, 24, 20, 24, 23]], prep.EMPTY_MASK),      # outside the 4x5 image
    ({"counts": [20], "size": [4, 5]}, prep.EMPTY_MASK),
])
def test_annotations_without_a_usable_mask_are_skipped(segmentation, reason):
    with pytest.raises(prep.SkipAnnotation, match=reason.split(" (")[0]):
        prep.annotation_mask(segmentation, 4, 5)


@pytest.mark.parametrize("segmentation, message", [
    ({"counts": SMALL_COUNTS, "size": [5, 4]}, "does not match"),
    ({"counts": [4, 2], "size": [4, 5]}, "cover 6 pixels"),
    ({"counts": "42206", "size": [4, 5]}, "cover"),
    ({"counts": "4\x7f", "size": [4, 5]}, "outside"),
    ({"counts": "X", "size": [4, 5]}, "middle of a number"),
])
def test_malformed_rle_is_an_error(segmentation, message):
    with pytest.raises(ValueError, match=message):
        prep.annotation_mask(segmentation, 4, 5)


def labeled(annotations, hw=(4, 5)):
    image = prep.LabeledImage(1, "x.png", "x.png", (None, None), hw=hw)
    image.annotations = annotations
    return image


def test_two_annotations_on_one_image_give_their_union():
    image = labeled([({"segmentation": [[1, 1, 3, 1, 3, 2, 1, 2]]}, "scratch"),
                     ({"segmentation": {"counts": SMALL_STRING, "size": [4, 5]}}, "scratch")])
    expected = np.array([[0, 1, 1, 0, 0],
                         [0, 1, 1, 1, 0],
                         [0, 1, 1, 1, 1],
                         [0, 0, 0, 0, 1]], np.uint8) * 255
    np.testing.assert_array_equal(prep.union_mask(image), expected)
    assert prep.defect_type(image) == "scratch"


def test_two_categories_on_one_image_are_combined():
    image = labeled([({}, "scratch"), ({}, "stain")])
    assert prep.defect_type(image) == "combined"


def test_names_clash_gets_deterministic_suffixes():
    stems = prep.unique_stems(["n/a.png", "n/a.jpg", "n/a_2.png", "n/sub/A.png", "n/.b.png"])
    # sorted paths: n/.b.png, n/a.jpg, n/a.png, n/a_2.png, n/sub/A.png; a_2 is somebody's own name
    assert stems == {"n/.b.png": "b", "n/a.jpg": "a", "n/a.png": "a_3", "n/a_2.png": "a_2",
                     "n/sub/A.png": "A_4"}


def test_category_names_become_safe_folder_names():
    assert prep.safe_folder_name("Broken Large", 1) == "broken_large"
    assert prep.safe_folder_name("../划痕 ", 2) == "划痕"
    assert prep.safe_folder_name("///", 3) == "category_3"


# The documented split: split_train_val(paths, 1 - train_ratio, seed), i.e. round(n * (1 - ratio))
# test images, at least 1 each side. 5 x 0.5: round(2.5) = 2 test images (round half to even).
@pytest.mark.parametrize("n, ratio, n_train",
                         [(5, 0.8, 4), (2, 0.9, 1), (3, 0.01, 1), (1, 0.5, 1), (5, 0.5, 3)])
def test_split_sizes(n, ratio, n_train):
    paths = [f"p{i}.png" for i in range(n)]
    train, test = split_train_val(paths, 1 - ratio, seed=0)
    assert len(train) == n_train and sorted(train + test) == paths


# ---------------------------------------------------------------------------------------------
# Command line

def write_image(path, seed, hw=(H, W)):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), image)
    return image


A_MASK = np.zeros((H, W), np.uint8)
A_MASK[1:3, 1:4] = 1  # polygon 1,1 .. 3,2
SUB_A_MASK = np.zeros((H, W), np.uint8)
SUB_A_MASK[5:7, 6:9] = 1  # given as uncompressed RLE
B_STAIN = np.zeros((H, W), np.uint8)
B_STAIN[0:2, 0:2] = 1  # compressed RLE
B_SCRATCH = np.zeros((H, W), np.uint8)
B_SCRATCH[4:8, 9] = 1  # polygon: a vertical line of a box from column 8.6 to 9.4


def coco_dataset(tmp_path):
    """3 annotated images (one with two categories, two named a.png), 1 without annotations and
    5 normal images; annotations include a bbox-only one and one for an unknown image."""
    labeled, normal = tmp_path / "labeled", tmp_path / "normal"
    for seed, name in enumerate(["a.png", "sub/a.png", "b.png", "d.png"]):
        write_image(labeled / name, seed)
    for seed, name in enumerate(["n0.png", "n1.png", "n2.jpg", "cam/n3.png", "n4.bmp"]):
        write_image(normal / name, 10 + seed)
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "height": H, "width": W},
                   {"id": 2, "file_name": "sub/a.png", "height": H, "width": W},
                   {"id": 3, "file_name": "b.png"},
                   {"id": 4, "file_name": "d.png", "height": H, "width": W}],
        "categories": [{"id": 1, "name": "Scratch"}, {"id": 2, "name": "stain"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 3, 1, 3, 2, 1, 2]]},
            {"id": 11, "image_id": 1, "category_id": 2, "bbox": [0, 0, 2, 2]},  # bbox only
            {"id": 12, "image_id": 2, "category_id": 1,
             "segmentation": {"counts": runs_of(SUB_A_MASK), "size": [H, W]}},
            {"id": 13, "image_id": 3, "category_id": 2,
             "segmentation": {"counts": encode_rle_string(runs_of(B_STAIN)), "size": [H, W]}},
            {"id": 14, "image_id": 3, "category_id": 1,
             "segmentation": [[8.6, 4, 9.4, 4, 9.4, 7, 8.6, 7]]},
            {"id": 15, "image_id": 99, "category_id": 1, "segmentation": [[0, 0, 1, 0, 1, 1]]},
        ],
    }
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    return coco


def tool_argv(tmp_path, out="out/cat", seed=0, ratio="0.8", annotations="instances.json"):
    return ["--annotations", str(tmp_path / annotations),
            "--labeled_dir", str(tmp_path / "labeled"),
            "--unlabeled_dir", str(tmp_path / "normal"), "--output_dir", str(tmp_path / out),
            "--train_ratio", ratio, "--seed", str(seed)]


def run_tool(tmp_path, **options):
    return subprocess.run([sys.executable, "tools/prepare_dataset.py", *tool_argv(tmp_path, **options)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def tree(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def read_gray(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def test_end_to_end_tree_masks_split_and_report(tmp_path):
    coco_dataset(tmp_path)
    result = run_tool(tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out" / "cat"
    assert result.stdout == (f"wrote {out}: 4 train/good, 1 test/good, 3 test images of 2 defect "
                             "types (2 annotations skipped)\n")
    assert sorted(os.listdir(tmp_path / "out")) == ["cat"]  # no temporary folder left
    (tmp_path / "plain").mkdir()  # what the user's umask gives a new folder, not mkdtemp's 0700
    assert stat.S_IMODE(out.stat().st_mode) == stat.S_IMODE((tmp_path / "plain").stat().st_mode)

    normal = sorted(str(p) for p in (tmp_path / "normal").rglob("*.*"))
    train, test = split_train_val(normal, 1 - 0.8, seed=0)  # the documented split
    assert not set(train) & set(test) and sorted(train + test) == normal
    stem = lambda p: Path(p).stem  # noqa: E731
    assert tree(out) == sorted(
        ["conversion.json",
         "ground_truth/combined/b_mask.png", "ground_truth/scratch/a_2_mask.png",
         "ground_truth/scratch/a_mask.png",
         "test/combined/b.png", "test/scratch/a.png", "test/scratch/a_2.png"]
        + [f"train/good/{stem(p)}.png" for p in train] + [f"test/good/{stem(p)}.png" for p in test])

    gt = out / "ground_truth"
    np.testing.assert_array_equal(read_gray(gt / "scratch/a_mask.png"), A_MASK * 255)
    np.testing.assert_array_equal(read_gray(gt / "scratch/a_2_mask.png"), SUB_A_MASK * 255)
    np.testing.assert_array_equal(read_gray(gt / "combined/b_mask.png"),
                                  (B_STAIN | B_SCRATCH) * 255)
    # images are the sources' pixels, as PNG (sub/a.png is the one written with seed 1)
    np.testing.assert_array_equal(read_gray(out / "test/scratch/a_2.png"),
                                  read_gray(tmp_path / "labeled/sub/a.png"))

    report = json.loads((out / "conversion.json").read_text())
    assert report["counts"] == {"test/combined": 1, "test/good": 1, "test/scratch": 2,
                                "train/good": 4}
    assert [(s["annotation_id"], s["reason"]) for s in report["skipped_annotations"]] == [
        (11, prep.NO_SEGMENTATION), (15, prep.UNKNOWN_IMAGE)]
    assert report["labeled_images_without_annotations"] == ["d.png"]
    assert report["arguments"]["seed"] == 0 and report["arguments"]["train_ratio"] == 0.8
    assert "skipped 2 of 6 annotations" in result.stderr


def test_split_is_seeded(tmp_path):
    coco_dataset(tmp_path)
    first, again = run_tool(tmp_path, out="s0"), run_tool(tmp_path, out="s0_again")
    assert first.returncode == again.returncode == 0
    assert tree(tmp_path / "s0") == tree(tmp_path / "s0_again")
    normal = sorted(str(p) for p in (tmp_path / "normal").rglob("*.*"))
    splits = {tuple(split_train_val(normal, 1 - 0.8, seed)[1]) for seed in range(10)}
    assert len(splits) > 1  # other seeds give other splits


def assert_one_error_line(result, *expected):
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in expected:
        assert text in lines[0]


def test_missing_annotations_key_is_one_error_line_and_writes_nothing(tmp_path):
    coco = coco_dataset(tmp_path)
    del coco["annotations"]
    (tmp_path / "bad.json").write_text(json.dumps(coco))
    result = run_tool(tmp_path, annotations="bad.json")
    assert_one_error_line(result, "bad.json", "'annotations'")
    assert not (tmp_path / "out").exists()


def test_missing_image_file_is_named_and_nothing_is_written(tmp_path):
    coco_dataset(tmp_path)
    (tmp_path / "labeled" / "sub" / "a.png").unlink()
    result = run_tool(tmp_path)
    assert_one_error_line(result, os.path.join(str(tmp_path / "labeled"), "sub/a.png"), "not found")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("change, expected", [
    (lambda coco: coco["annotations"][2]["segmentation"].update(size=[W, H]), "does not match"),
    (lambda coco: coco["images"][0].update(width=W + 1), "a.png"),
])
def test_inconsistent_sizes_are_errors(tmp_path, change, expected):
    coco = coco_dataset(tmp_path)
    change(coco)
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    assert_one_error_line(run_tool(tmp_path), expected)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage, expected", [
    (lambda root: (root / "instances.json").write_text("{"), "not valid JSON"),
    (lambda root: (root / "labeled" / "b.png").write_bytes(b"\x89PNG broken"),
     "b.png: cannot decode"),
    (lambda root: [p.unlink() for p in (root / "normal").rglob("*.*")], "--unlabeled_dir"),
])
def test_unreadable_inputs_are_one_error_line(tmp_path, damage, expected):
    coco_dataset(tmp_path)
    damage(tmp_path)
    assert_one_error_line(run_tool(tmp_path), expected)
    assert not (tmp_path / "out").exists()


def test_bad_train_ratio_is_refused(tmp_path):
    coco_dataset(tmp_path)
    assert_one_error_line(run_tool(tmp_path, ratio="1"), "--train_ratio")
    assert not (tmp_path / "out").exists()


def test_existing_output_dir_is_refused_and_left_untouched(tmp_path):
    coco_dataset(tmp_path)
    existing = tmp_path / "out" / "cat"
    existing.mkdir(parents=True)
    (existing / "keep.txt").write_text("mine")
    result = run_tool(tmp_path)
    assert_one_error_line(result, "exists; choose a new folder")
    assert tree(existing) == ["keep.txt"] and (existing / "keep.txt").read_text() == "mine"
    assert os.listdir(tmp_path / "out") == ["cat"]


def test_interrupted_run_leaves_nothing_and_removes_the_parents_it_made(tmp_path, monkeypatch,
                                                                         capsys):
    coco_dataset(tmp_path)
    before = sorted(os.listdir(tmp_path))
    calls = []

    def interrupted(path, image):
        calls.append(path)
        if len(calls) == 3:  # some files are written by now
            raise KeyboardInterrupt
        return write_png(path, image)

    monkeypatch.setattr(prep, "write_png", interrupted)
    with pytest.raises(SystemExit) as stop:
        prep.main(tool_argv(tmp_path, out="new/parents/cat"))
    assert stop.value.code == 130 and len(calls) == 3
    assert sorted(os.listdir(tmp_path)) == before  # no temporary folder, no parent folders
    assert "Traceback" not in capsys.readouterr().err
