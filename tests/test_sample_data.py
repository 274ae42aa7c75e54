"""The shipped sample_data/ has a usable MVTec layout and is exactly what its generator makes."""
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample_data"
GENERATOR = REPO / "tools" / "make_sample_data.py"
MASKLESS = {("brick", "misc")}  # the one defect type shipped without ground truth on purpose
SIZE = 256
BLOCK = 4096


def categories():
    return sorted(p for p in SAMPLE.iterdir() if p.is_dir())


def read(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, f"unreadable PNG: {path}"
    return image


def file_tree(root: Path) -> dict[str, bytes]:
    """Decoded pixels of each PNG (PNG bytes vary with the zlib build), raw bytes otherwise."""
    return {p.relative_to(root).as_posix(): read(p).tobytes() if p.suffix == ".png" else p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def run_generator(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(GENERATOR), *args], capture_output=True,
                          text=True, timeout=120)


def test_at_least_two_categories_one_gray_one_colour():
    kinds = {}
    for cat in categories():
        first = read(next((cat / "train" / "good").glob("*.png")))
        kinds[cat.name] = "gray" if first.ndim == 2 else f"{first.shape[2]}ch"
    assert len(kinds) >= 2
    assert set(kinds.values()) == {"gray", "3ch"}, kinds


@pytest.mark.parametrize("split", ["train", "test"])
def test_good_images_have_the_model_size_and_one_channel_layout_per_category(split):
    for cat in categories():
        goods = sorted((cat / split / "good").glob("*.png"))
        assert len(goods) >= (12 if split == "train" else 3), cat.name
        shapes = {read(p).shape for p in goods}
        assert len(shapes) == 1 and next(iter(shapes))[:2] == (SIZE, SIZE), (cat.name, shapes)


def test_train_only_has_good_and_good_has_no_ground_truth():
    for cat in categories():
        assert [p.name for p in (cat / "train").iterdir()] == ["good"]
        assert not (cat / "ground_truth" / "good").exists()


def test_test_good_images_are_not_copies_of_training_images():
    for cat in categories():
        train = [read(p) for p in sorted((cat / "train" / "good").glob("*.png"))]
        for p in sorted((cat / "test" / "good").glob("*.png")):
            image = read(p).astype(np.int16)
            assert min(np.abs(image - t).mean() for t in train) > 5, p


def test_every_defect_image_has_a_binary_mask_of_its_size_except_the_maskless_type():
    n_masks = 0
    for cat in categories():
        defect_dirs = [d for d in sorted((cat / "test").iterdir()) if d.name != "good"]
        assert len(defect_dirs) >= 3, cat.name
        for defect_dir in defect_dirs:
            images = sorted(defect_dir.glob("*.png"))
            assert images, defect_dir
            gt_dir = cat / "ground_truth" / defect_dir.name
            if (cat.name, defect_dir.name) in MASKLESS:
                assert not gt_dir.exists()
                continue
            assert sorted(p.name for p in gt_dir.iterdir()) == \
                sorted(f"{p.stem}_mask.png" for p in images)
            for image_path in images:
                mask = read(gt_dir / f"{image_path.stem}_mask.png")
                assert mask.ndim == 2 and mask.shape == read(image_path).shape[:2]
                assert set(np.unique(mask)) == {0, 255}
                assert 0.003 <= (mask == 255).mean() <= 0.05  # visible, not trivially huge
                n_masks += 1
    assert n_masks > 0


def test_maskless_defect_type_really_ships_images():
    for cat_name, defect in MASKLESS:
        assert len(list((SAMPLE / cat_name / "test" / defect).glob("*.png"))) >= 1


def test_total_size_is_under_3_mb():
    # Count every file rounded up to a 4 KiB block, as `du -sk` does on common filesystems.
    files = [p for p in SAMPLE.rglob("*") if p.is_file()]
    total = sum(-(-p.stat().st_size // BLOCK) * BLOCK for p in files)
    assert total < 3 * 1024 * 1024, total


def test_regenerating_reproduces_the_shipped_files_exactly(tmp_path):
    out = tmp_path / "regenerated"
    out.mkdir()
    (out / "stale.txt").write_text("left over")

    refused = run_generator("--out", str(out))
    assert refused.returncode == 2 and "--force" in refused.stderr
    assert (out / "stale.txt").exists()

    done = run_generator("--out", str(out), "--force")
    assert done.returncode == 0, done.stderr
    shipped, regenerated = file_tree(SAMPLE), file_tree(out)
    assert sorted(regenerated) == sorted(shipped)  # also: the stale file is gone
    differing = [name for name in shipped if shipped[name] != regenerated[name]]
    assert not differing, f"regenerated files differ from sample_data/: {differing[:5]}"
    assert [p.name for p in tmp_path.iterdir()] == ["regenerated"]  # no staging leftovers
