"""Synthetic defects: exact masks, area bounds, untouched inputs, determinism, on real photos."""
import cv2
import numpy as np
import pytest
from skimage import data

from adkit.synthetic import DEFAULT_KINDS, KINDS, make_defect, synthetic_defects

SEEDS = range(4)


def brick():
    """A grey texture (square, resized to 256)."""
    return cv2.resize(cv2.cvtColor(data.brick(), cv2.COLOR_GRAY2RGB), (256, 256), interpolation=cv2.INTER_AREA)


def astronaut_crop():
    """A colour photo, non-square: 200 rows x 300 columns."""
    return np.ascontiguousarray(data.astronaut()[100:300, 150:450])


IMAGES = {"brick": brick(), "astronaut": astronaut_crop()}


@pytest.mark.parametrize("name", IMAGES)
@pytest.mark.parametrize("kind", DEFAULT_KINDS)
def test_mask_is_exactly_the_changed_pixels(kind, name):
    image = IMAGES[name]
    before = image.copy()
    for seed in SEEDS:
        out, mask = make_defect(image, kind, np.random.default_rng(seed))
        assert out.dtype == np.uint8 and out.shape == image.shape
        assert mask.dtype == np.uint8 and mask.shape == image.shape[:2]
        assert set(np.unique(mask)) == {0, 1}
        changed = np.zeros(image.shape[:2], bool)
        for c in range(3):
            changed |= out[..., c] != image[..., c]
        np.testing.assert_array_equal(mask.astype(bool), changed)
        assert 0.003 <= mask.mean() <= 0.08, (kind, name, seed, mask.mean())
        # visible: the mean per-pixel change over the mask is well above rounding noise
        step = np.abs(out.astype(int) - image.astype(int)).max(-1)[changed].mean()
        assert step >= 10, (kind, name, seed, step)
        np.testing.assert_array_equal(image, before)


@pytest.mark.parametrize("kind", DEFAULT_KINDS)
def test_flat_and_saturated_images_still_get_exact_masks(kind):
    # blending with copies of a flat image changes nothing by itself: the push step must do it
    for value in (0, 255):
        image = np.full((48, 64, 3), value, np.uint8)
        out, mask = make_defect(image, kind, np.random.default_rng(7))
        np.testing.assert_array_equal(mask.astype(bool), (out != image).any(-1))
        assert 0.003 <= mask.mean() <= 0.08


def test_scratch_is_thin_and_darker_or_brighter():
    image = IMAGES["brick"]
    for seed in SEEDS:
        out, mask = make_defect(image, "scratch", np.random.default_rng(seed))
        # at 256 px the lines are at most 3 px wide: a 5x5 opening removes almost all of them
        opened = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
        assert opened.sum() < 0.1 * mask.sum()
        lum_in, lum_out = image.mean(-1)[mask == 1], out.mean(-1)[mask == 1]
        assert abs((lum_out - lum_in).mean()) >= 30


def test_cut_paste_is_one_rectangle_and_blotch_one_blob():
    image = IMAGES["astronaut"]
    for seed in SEEDS:
        _, mask = make_defect(image, "cut_paste", np.random.default_rng(seed))
        contours = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[0]
        assert len(contours) == 1
        hull = cv2.contourArea(cv2.convexHull(contours[0]))
        assert mask.sum() >= 0.85 * hull  # a (rotated) rectangle is convex
        _, mask = make_defect(image, "perlin_blotch", np.random.default_rng(seed))
        assert cv2.connectedComponents(mask, connectivity=8)[0] == 2  # background + one blob


def test_same_seed_same_bytes_other_seed_other_defects():
    images = list(IMAGES.values())
    first = synthetic_defects(images, seed=3, per_image=2)
    again = synthetic_defects(images, seed=3, per_image=2)
    other = synthetic_defects(images, seed=4, per_image=2)
    for (a, ma, ka), (b, mb, kb) in zip(first, again):
        assert ka == kb and a.tobytes() == b.tobytes() and ma.tobytes() == mb.tobytes()
    for (a, _, _), (c, _, _) in zip(first, other):
        assert a.tobytes() != c.tobytes()
    # repetitions of one kind on one image differ from each other
    assert first[0][0].tobytes() != first[1][0].tobytes()


def test_defect_of_an_image_does_not_depend_on_the_other_images():
    a, b = IMAGES["brick"], IMAGES["astronaut"]
    alone = synthetic_defects([a], seed=1)
    together = synthetic_defects([a, b], seed=1)
    for (x, mx, _), (y, my, _) in zip(alone, together[:len(alone)]):
        assert x.tobytes() == y.tobytes() and mx.tobytes() == my.tobytes()
    # matches make_defect with the documented generator
    out, mask = make_defect(b, "scratch", np.random.default_rng([1, 1, 1, 0]))
    np.testing.assert_array_equal(together[4][0], out)
    np.testing.assert_array_equal(together[4][1], mask)


def test_order_and_count():
    images = [IMAGES["brick"], IMAGES["astronaut"], IMAGES["brick"][:64, :96].copy()]
    kinds = ("scratch", "cut_paste")
    result = synthetic_defects(images, seed=0, kinds=kinds, per_image=3)
    assert len(result) == len(images) * len(kinds) * 3
    assert [kind for _, _, kind in result] == [k for _ in images for k in kinds for _ in range(3)]
    shapes = [out.shape for out, _, _ in result]
    assert shapes == [img.shape for img in images for _ in range(len(kinds) * 3)]


def test_kinds_registry():
    assert set(DEFAULT_KINDS) <= set(KINDS)
    out, mask = KINDS["perlin_blotch"](IMAGES["brick"], np.random.default_rng(0))
    np.testing.assert_array_equal(mask.astype(bool), (out != IMAGES["brick"]).any(-1))


def test_unknown_kind_and_bad_images_raise():
    with pytest.raises(ValueError, match="'smudge'"):
        make_defect(IMAGES["brick"], "smudge", np.random.default_rng(0))
    with pytest.raises(ValueError, match="'smudge'"):
        synthetic_defects([IMAGES["brick"]], seed=0, kinds=("scratch", "smudge"))
    with pytest.raises(ValueError):
        make_defect(IMAGES["brick"].astype(np.float32), "scratch", np.random.default_rng(0))
    with pytest.raises(ValueError):
        make_defect(IMAGES["brick"][:16], "scratch", np.random.default_rng(0))
    with pytest.raises(ValueError):
        make_defect(IMAGES["brick"][..., 0], "scratch", np.random.default_rng(0))
