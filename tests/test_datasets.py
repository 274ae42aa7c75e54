"""Image loading, MVTec layout handling and the seeded data order, on files written here."""
import os

import cv2
import numpy as np
import pytest

from adkit.core.errors import UserError
from adkit.train.training import batch_stream
from adkit.core.image_io import read_mask, read_rgb, to_chw_float
from adkit.datasets import ImageDataset, MVTecCategory, TestDataset, find_categories, split_train_val


def write(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(path, array)
    return path


def test_grayscale_rgba_and_16bit_become_rgb(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    rgba = np.dstack([gray, gray // 2, gray // 4, np.full_like(gray, 7)])  # BGRA on disk
    deep = gray.astype(np.uint16) * 257  # the same intensities in 16 bits
    out_gray = read_rgb(write(str(tmp_path / "g.png"), gray))
    out_rgba = read_rgb(write(str(tmp_path / "a.png"), rgba))
    out_deep = read_rgb(write(str(tmp_path / "d.png"), deep))
    assert out_gray.shape == (8, 8, 3) and out_gray.dtype == np.uint8
    np.testing.assert_array_equal(out_gray[..., 0], gray)
    # BGRA on disk -> RGB in memory: red is the third stored channel, alpha dropped
    np.testing.assert_array_equal(out_rgba[..., 0], gray // 4)
    np.testing.assert_array_equal(out_rgba[..., 2], gray)
    np.testing.assert_array_equal(out_deep[..., 1], gray)


def test_chw_float_range_and_layout():
    image = np.zeros((4, 5, 3), np.uint8)
    image[1, 2] = (255, 51, 0)
    chw = to_chw_float(image)
    assert chw.shape == (3, 4, 5) and chw.dtype == np.float32
    assert chw[0, 1, 2] == 1.0 and abs(chw[1, 1, 2] - 0.2) < 1e-7 and chw.max() == 1.0


def test_unreadable_image_and_mask_mismatch_are_user_errors(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(UserError, match="broken.png: cannot decode"):
        read_rgb(str(broken))
    mask = write(str(tmp_path / "m.png"), np.zeros((6, 9), np.uint8))
    with pytest.raises(UserError, match="mask is 9x6 but its image is 8x8"):
        read_mask(mask, (8, 8))


def make_category(root, n_train=5, with_masks=True):
    rng = np.random.default_rng(0)
    for i in range(n_train):
        write(f"{root}/part/train/good/{i:03d}.png", rng.integers(0, 255, (40, 40, 3), np.uint8))
    write(f"{root}/part/test/good/000.png", rng.integers(0, 255, (40, 40, 3), np.uint8))
    write(f"{root}/part/test/dent/000.png", rng.integers(0, 255, (40, 40, 3), np.uint8))
    write(f"{root}/part/test/odd/000.png", rng.integers(0, 255, (40, 40, 3), np.uint8))
    if with_masks:
        mask = np.zeros((40, 40), np.uint8)
        mask[10:20, 5:15] = 255
        write(f"{root}/part/ground_truth/dent/000_mask.png", mask)


def test_a_files_problem_is_found_from_its_ends_in_the_words_reading_it_gives(tmp_path):
    """image_file_problem (infer's check before scoring) against read_rgb itself: the same
    message for every file reading refuses, nothing for every file it reads."""
    from adkit.core.image_io import image_file_problem

    image = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    readable = []
    for ext in ("png", "jpg", "bmp", "tif", "webp", "ppm"):  # ppm: an unusual format, decoded
        path = str(tmp_path / f"ok.{ext}")
        assert cv2.imwrite(path, image)
        readable.append(path)
    png, jpg = (open(p, "rb").read() for p in readable[:2])
    bad = {"cut.png": png[:len(png) // 2], "cut.jpg": jpg[:len(jpg) // 2], "empty.png": b"",
           "fake.jpg": b"not an image, just text" * 10, "short.jpg": b"\xff\xd8"}
    for name, content in bad.items():
        (tmp_path / name).write_bytes(content)
    for path in readable:
        read_rgb(path)
        assert image_file_problem(path) == "", path
    for path in [str(tmp_path / name) for name in bad] + [str(tmp_path / "missing.png")]:
        with pytest.raises(UserError) as refused:
            read_rgb(path)
        assert image_file_problem(path) == str(refused.value), path


def test_mvtec_layout_masks_and_types(tmp_path):
    make_category(tmp_path)
    assert find_categories({"data_dir": str(tmp_path)}) == ["part"]
    category = MVTecCategory(str(tmp_path), "part")
    items = category.test_items()
    assert [(i.defect_type, i.label, i.mask_path is not None) for i in items] == [
        ("dent", 1, True), ("good", 0, False), ("odd", 1, False)]
    test_set = TestDataset(items, 32)
    mask, has_mask = test_set.mask(0)
    assert has_mask and mask.shape == (32, 32)
    # nearest-neighbour resize of rows 10-19 / cols 5-14 from 40 to 32 pixels
    expected = np.zeros((40, 40), np.uint8)
    expected[10:20, 5:15] = 1
    np.testing.assert_array_equal(mask, cv2.resize(expected, (32, 32), interpolation=cv2.INTER_NEAREST))
    assert test_set.mask(2)[1] is False  # defect type without ground truth: no pixel metrics
    assert test_set.mask(1)[1] is True and test_set.mask(1)[0].sum() == 0
    assert test_set[0].shape == (3, 32, 32)


def test_layout_errors_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="folder not found"):
        find_categories({"data_dir": str(tmp_path / "nowhere")})
    make_category(tmp_path)
    with pytest.raises(UserError, match="--cls bolt: no such category .*found: part"):
        MVTecCategory(str(tmp_path), "bolt")
    for f in (tmp_path / "part/train/good").iterdir():
        f.unlink()
    with pytest.raises(UserError, match="train/good: no images found"):
        MVTecCategory(str(tmp_path), "part").train_paths()
    os.remove(tmp_path / "part/ground_truth/dent/000_mask.png")
    with pytest.raises(UserError, match="000_mask.png: mask missing"):
        MVTecCategory(str(tmp_path), "part").test_items()


def test_validation_split_is_seeded_disjoint_and_never_empty():
    paths = [f"{i}.png" for i in range(10)]
    train, val = split_train_val(paths, 0.2, seed=3)
    assert len(val) == 2 and sorted(train + val) == sorted(paths)
    assert split_train_val(paths, 0.2, seed=3) == (train, val)
    assert split_train_val(paths[:2], 0.1, seed=0)[1]  # at least one validation image
    with pytest.raises(UserError, match="--val_ratio"):
        split_train_val(paths, 1.0, seed=0)


@pytest.mark.parametrize("n, at_least, expected", [
    (14, 3, 3),   # sample_data's brick: --val_ratio 0.1 alone holds out 1
    (16, 3, 3),   # gravel: 2 by the ratio
    (6, 3, 3),
    (5, 3, 2),    # training keeps at least half
    (2, 3, 1),
    (200, 3, 20),  # the ratio gives more: the ratio holds
    (14, 1, 1),   # the plain ratio (tools' test splits)
])
def test_at_least_a_few_validation_images_are_held_out(n, at_least, expected):
    paths = [f"{i:03d}.png" for i in range(n)]
    train, val = split_train_val(paths, 0.1, seed=0, at_least=at_least)
    assert len(val) == expected and sorted(train + val) == paths
    # the extra images come from the same seeded order: the ratio's are among them
    assert set(split_train_val(paths, 0.1, seed=0)[1]) <= set(val)
    assert split_train_val(paths, 0.0, seed=0, at_least=at_least)[1] == []  # --val_ratio 0: none


class Indexed:
    """A dataset whose images are their own index, so batches show the data order."""

    def __len__(self):
        return 7

    def __getitem__(self, i):
        return np.full((1, 1, 1), i, np.float32)


def test_batch_stream_is_a_function_of_seed_and_step():
    def first(n, stream):
        return [batch[:, 0, 0, 0].tolist() for _, (_, batch) in zip(range(n), stream)]

    full = first(9, batch_stream(Indexed(), 3, seed=5))
    resumed = first(4, batch_stream(Indexed(), 3, 5, start_step=5))
    assert resumed == full[5:9]
    # each epoch (2 batches of 3 from 7 images) holds distinct images
    assert len(set(full[0] + full[1])) == 6
    steps = [step for _, (step, _) in zip(range(3), batch_stream(Indexed(), 3, 5, start_step=4))]
    assert steps == [4, 5, 6]


def test_image_dataset_resizes_to_model_size(tmp_path):
    path = write(str(tmp_path / "x.png"), np.full((50, 70, 3), 128, np.uint8))
    ds = ImageDataset([path], 32)
    assert ds[0].shape == (3, 32, 32) and abs(float(ds[0].mean()) - 128 / 255) < 1e-6
    assert ds.original_hw[0] == (50, 70)
