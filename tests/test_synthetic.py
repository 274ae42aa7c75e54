"""Synthetic defects: exact masks, area bounds, untouched inputs, determinism, on real photos."""
import cv2
import numpy as np
import pytest
from skimage import data

from adkit.evaluate.synthetic import (DATASET_KINDS, DEFAULT_KINDS, KINDS, MAX_AREA, MIN_AREA, make_defect,
                                      synthetic_defects)

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


# ---------------------------------------------------------------------------------------------
# The dataset kinds (tools/make_synthetic.py)

NEW_KINDS = tuple(k for k in DATASET_KINDS if k not in DEFAULT_KINDS)
SHAPES = {"grey256": brick(),
          "colour256": cv2.resize(data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA),
          "colour96x160": cv2.resize(data.astronaut(), (160, 96), interpolation=cv2.INTER_AREA)}
BRIGHT = np.clip(brick().astype(int) + 110, 0, 255).astype(np.uint8)  # a light grey part


def changed_pixels(out, image):
    return (out != image).any(-1)


def ring(mask, radius=5):
    """Pixels within `radius` of the mask, outside it: its surroundings."""
    grown = cv2.dilate(mask, np.ones((2 * radius + 1,) * 2, np.uint8)).astype(bool)
    return grown & ~mask.astype(bool)


def test_dataset_kinds_are_registered_and_calibration_kinds_unchanged():
    assert DATASET_KINDS == ("scratch", "crack", "stain", "missing_piece", "foreign_object", "colour_shift")
    assert set(DATASET_KINDS) <= set(KINDS)
    assert DEFAULT_KINDS == ("cut_paste", "scratch", "perlin_blotch")
    assert {"cut_paste", "perlin_blotch"} <= set(KINDS)


@pytest.mark.parametrize("name", SHAPES)
@pytest.mark.parametrize("kind", NEW_KINDS)
def test_new_kinds_exact_masks_in_bounds_visible(kind, name):
    image = SHAPES[name]
    before = image.copy()
    for seed in SEEDS:
        out, mask = make_defect(image, kind, np.random.default_rng(seed))
        assert out.dtype == np.uint8 and out.shape == image.shape
        assert mask.dtype == np.uint8 and mask.shape == image.shape[:2] and set(np.unique(mask)) == {0, 1}
        np.testing.assert_array_equal(mask.astype(bool), changed_pixels(out, image))
        assert MIN_AREA <= mask.mean() <= MAX_AREA, (kind, name, seed, mask.mean())
        step = np.abs(out.astype(int) - image.astype(int)).max(-1)[mask == 1].mean()
        assert step >= 10, (kind, name, seed, step)
        np.testing.assert_array_equal(image, before)


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_new_kinds_same_seed_same_bytes_other_seed_differs(kind):
    image = SHAPES["colour96x160"]
    first = make_defect(image, kind, np.random.default_rng([5, 1]))
    again = make_defect(image, kind, np.random.default_rng([5, 1]))
    other = make_defect(image, kind, np.random.default_rng([5, 2]))
    assert first[0].tobytes() == again[0].tobytes() and first[1].tobytes() == again[1].tobytes()
    assert first[0].tobytes() != other[0].tobytes() and first[1].tobytes() != other[1].tobytes()


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_new_kinds_on_flat_saturated_and_smallest_images(kind):
    images = [np.full((48, 64, 3), v, np.uint8) for v in (0, 255)] + [brick()[:32, :32].copy(),
                                                                        brick()[:32, :200].copy()]
    for image in images:
        for seed in SEEDS:
            out, mask = make_defect(image, kind, np.random.default_rng(seed))
            np.testing.assert_array_equal(mask.astype(bool), changed_pixels(out, image))
            assert MIN_AREA <= mask.mean() <= MAX_AREA


def test_crack_is_thin_and_darker_than_its_surroundings():
    for seed in SEEDS:
        out, mask = make_defect(BRIGHT, "crack", np.random.default_rng(seed))
        on = mask.astype(bool)
        luma = out.mean(-1)
        assert (luma[on] < BRIGHT.mean(-1)[on]).all()  # every crack pixel got darker
        assert luma[on].mean() < 0.6 * luma[ring(mask)].mean()
        opened = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
        assert opened.sum() < 0.1 * mask.sum()


def test_stain_is_one_soft_edged_see_through_blob():
    image = SHAPES["grey256"]
    for seed in SEEDS:
        out, mask = make_defect(image, "stain", np.random.default_rng(seed))
        change = np.abs(out.astype(int) - image.astype(int)).max(-1)
        core = cv2.erode(mask, np.ones((7, 7), np.uint8)).astype(bool)
        edge = mask.astype(bool) & ~cv2.erode(mask, np.ones((3, 3), np.uint8)).astype(bool)
        assert change[edge].mean() < 0.5 * change[core].mean()  # fades out: no hard outline
        # semi-transparent: the texture below still shows through the tint
        assert np.corrcoef(out.mean(-1)[core], image.mean(-1)[core])[0, 1] > 0.6
        assert cv2.connectedComponents(mask, connectivity=8)[0] == 2


def test_missing_piece_is_flat_far_from_the_part_and_at_the_border():
    image = SHAPES["grey256"]
    for seed in SEEDS:
        out, mask = make_defect(image, "missing_piece", np.random.default_rng(seed))
        on = mask.astype(bool)
        pixels = out[on].astype(int)
        flat = np.median(pixels, 0)
        assert (np.abs(pixels - flat).max(-1) <= 3).mean() >= 0.95
        assert abs(flat.mean() - image[on].mean()) >= 80
        assert on[0].any() or on[-1].any() or on[:, 0].any() or on[:, -1].any()


def test_foreign_object_is_opaque_and_one_piece():
    # the same draw on two different bright surfaces: an opaque object looks the same on both
    flipped = BRIGHT[:, ::-1].copy()
    for seed in SEEDS:
        out_a, mask_a = make_defect(BRIGHT, "foreign_object", np.random.default_rng(seed))
        out_b, mask_b = make_defect(flipped, "foreign_object", np.random.default_rng(seed))
        hidden = (mask_a & mask_b).astype(bool) & (BRIGHT != flipped).any(-1) & (out_a == out_b).all(-1)
        assert hidden.sum() >= 0.5 * mask_a.sum()
        _, _, stats, _ = cv2.connectedComponentsWithStats(mask_a, connectivity=8)
        assert stats[1:, cv2.CC_STAT_AREA].max() >= 0.9 * mask_a.sum()  # object and its shadow
        assert np.median(out_a.mean(-1)[mask_a == 1]) < 100  # dark on a light part


def test_colour_shift_colours_a_grey_part_with_a_soft_edge():
    image = SHAPES["grey256"]  # every channel equal: no saturation at all
    for seed in SEEDS:
        out, mask = make_defect(image, "colour_shift", np.random.default_rng(seed))
        chroma = out.max(-1).astype(int) - out.min(-1)
        assert chroma[mask == 1].mean() >= 20
        assert chroma[mask == 0].max() == 0
        core = cv2.erode(mask, np.ones((7, 7), np.uint8)).astype(bool)
        edge = mask.astype(bool) & ~cv2.erode(mask, np.ones((3, 3), np.uint8)).astype(bool)
        assert chroma[edge].mean() < chroma[core].mean()  # soft-ish edge
