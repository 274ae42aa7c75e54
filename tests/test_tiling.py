"""Tiles of photos at their own resolution (adkit.core.tiling): the grid, the blend, one photo
scored through its tiles, defects drawn at the photo's pixel size; checked against hand-made
cases and numpy computations written out here."""
import numpy as np
import pytest

from adkit.core.errors import UserError
from adkit.core.image_io import aspect_note, image_hw, size_text
from adkit.core.tiling import MIN_WEIGHT, Tiling, blend_weights, check_tiling, score_photo, stitch


def tiling(tile, stride, model=None):
    return Tiling(image_hw(tile), image_hw(stride), image_hw(model or tile))


@pytest.mark.parametrize("value, hw", [(256, (256, 256)), ("256", (256, 256)), ("384x512", (384, 512)),
                                       (" 96X64 ", (96, 64)), ([64, 96], (64, 96))])
def test_sizes_read_as_height_and_width(value, hw):
    assert image_hw(value) == hw
    assert image_hw(size_text(hw)) == hw


@pytest.mark.parametrize("value", ["5l2", "3x4x5", "x64", "", 2.5, True, [1, 2, 3]])
def test_bad_sizes_are_refused(value):
    with pytest.raises(ValueError):
        image_hw(value)


def test_boxes_cover_every_pixel_with_whole_tiles_ending_at_the_edges():
    t = tiling(100, 75)
    boxes = t.boxes(240, 320)
    # rows 0, 75, 140 (moved back to end at 240); cols 0, 75, 150, 220 (moved back to 320)
    assert sorted({b[0] for b in boxes}) == [0, 75, 140]
    assert sorted({b[1] for b in boxes}) == [0, 75, 150, 220]
    assert len(boxes) == t.count(240, 320) == 12
    covered = np.zeros((240, 320), int)
    for top, left, h, w in boxes:
        assert (h, w) == (100, 100)
        covered[top:top + h, left:left + w] += 1
    assert covered.min() >= 1


def test_a_photo_smaller_than_a_tile_is_one_tile_of_its_own_size():
    assert tiling(128, 96).boxes(100, 300) == [(0, 0, 100, 128), (0, 96, 100, 128), (0, 172, 100, 128)]


def test_a_grid_without_overlap_cuts_the_photo_exactly():
    assert tiling(64, 64).boxes(128, 192) == [(0, 0, 64, 64), (0, 64, 64, 64), (0, 128, 64, 64),
                                              (64, 0, 64, 64), (64, 64, 64, 64), (64, 128, 64, 64)]


def test_blend_weights_ramp_over_the_overlap_only():
    weights = blend_weights(6, 8, (2, 0))
    np.testing.assert_allclose(weights[:, 0], [1 / 3, 2 / 3, 1, 1, 2 / 3, 1 / 3], rtol=1e-6)
    np.testing.assert_allclose(weights[2], np.ones(8))
    assert blend_weights(4, 4, (0, 0)).min() == 1.0


def test_stitching_the_crops_of_one_map_gives_that_map_back():
    rng = np.random.default_rng(0)
    truth = rng.random((150, 230)).astype(np.float32)
    t = tiling(64, 40)  # tile = model size: each tile map is the crop itself
    boxes = t.boxes(150, 230)
    crops = [truth[top:top + h, left:left + w] for top, left, h, w in boxes]
    np.testing.assert_allclose(stitch(t, (150, 230), boxes, crops), truth, rtol=1e-5, atol=1e-6)


def test_overlapping_tiles_cross_fade_by_hand():
    # two 4-pixel-wide tiles of one row, 2 pixels apart: columns 2 and 3 are shared
    t = tiling((1, 4), (1, 2))
    boxes = t.boxes(1, 6)
    assert boxes == [(0, 0, 1, 4), (0, 2, 1, 4)]
    amap = stitch(t, (1, 6), boxes, [np.full((1, 4), 1.0), np.full((1, 4), 5.0)])
    # weights along a tile of 4 with overlap 2: distance to the edge + 1 = 1, 2, 2, 1 over 3
    # column 2: tile A's third pixel (2/3) and tile B's first (1/3): (2/3*1 + 1/3*5) / 1
    # column 3: tile A's last (1/3) and tile B's second (2/3): (1/3*1 + 2/3*5) / 1
    np.testing.assert_allclose(amap[0], [1, 1, 7 / 3, 11 / 3, 5, 5], rtol=1e-6)


def test_a_border_seen_by_one_tile_keeps_its_value():
    t = tiling((1, 4), (1, 2))
    amap = stitch(t, (1, 6), t.boxes(1, 6), [np.array([[9.0, 0, 0, 0]]), np.array([[0, 0, 0, 7.0]])])
    assert amap[0, 0] == pytest.approx(9.0) and amap[0, 5] == pytest.approx(7.0)
    assert MIN_WEIGHT > 0


def fake_engine(batch):
    """An 'engine' whose map is each pixel's channel mean at half the input size: tiles come in
    at the model size, maps go out smaller (as a real model's may before its own resize)."""
    batch = np.asarray(batch)
    assert batch.dtype == np.float32 and batch.shape[1] == 3
    mean = batch.mean(axis=1)
    small = mean.reshape(mean.shape[0], mean.shape[1] // 2, 2, mean.shape[2] // 2, 2).mean(axis=(2, 4))
    return small[:, None], small.reshape(len(batch), -1).max(axis=1)


def test_a_photo_scored_through_tiles_is_its_own_map_at_its_own_size():
    rng = np.random.default_rng(1)
    photo = np.zeros((120, 200, 3), np.uint8)
    photo[:] = rng.integers(0, 40, (120, 200, 1))  # a dark textured part ...
    photo[50:56, 130:140] = 250  # ... with a small bright defect
    seen = []
    amap, score = score_photo(fake_engine, tiling(32, 24), photo, 5, seen.append)
    assert amap.shape == (120, 200) and amap.dtype == np.float32
    assert score == pytest.approx(float(amap.max()))
    assert sum(seen) == tiling(32, 24).count(120, 200) and max(seen) <= 5
    # the map is the channel mean (in [0,1]) blurred by the 2x2 pooling and resize: the defect's
    # pixels stand out, and far from it the map is the texture's level
    assert np.unravel_index(np.argmax(amap), amap.shape)[0] in range(48, 58)
    assert score > 0.8 and float(np.median(amap)) < 0.2


def test_tiles_are_resized_to_the_model_input():
    photo = np.arange(100 * 160 * 3, dtype=np.uint8).reshape(100, 160, 3)
    t = tiling(80, 80, model=32)
    tile = t.cut(photo, t.boxes(100, 160)[0])
    assert tile.shape == (32, 32, 3) and tile.dtype == np.uint8


@pytest.mark.parametrize("tile, stride, model, says", [
    (128, 160, 64, "larger than --tile_size"),
    ("128x256", None, 64, "different aspect ratios"),
    (4, None, 64, "at least 8"),
])
def test_tile_options_that_cannot_work_are_one_line(tile, stride, model, says):
    with pytest.raises(UserError, match=says):
        check_tiling(tile, stride, model)


def test_a_squashed_aspect_ratio_is_noted_and_a_kept_one_is_not():
    note = aspect_note((1200, 1600), 256)
    assert "1600x1200" in note and "--image_size 256x352" in note
    assert aspect_note((1200, 1600), "192x256") is None


def test_defects_in_a_window_are_drawn_at_the_photos_pixel_size():
    from adkit.evaluate.synthetic import make_defect, make_defect_in_window

    rng = np.random.default_rng(3)
    photo = rng.integers(60, 200, (600, 900, 3)).astype(np.uint8)
    for kind in ("scratch", "cut_paste", "perlin_blotch"):
        out, mask = make_defect_in_window(photo, kind, np.random.default_rng([5, len(kind)]), (96, 96))
        changed = np.any(out != photo, axis=2)
        assert np.array_equal(changed, mask.astype(bool))  # exactly the changed pixels
        rows, cols = np.nonzero(mask)
        assert np.ptp(rows) < 96 and np.ptp(cols) < 96  # inside one tile-sized window
        # about as large as on a 96-px image, not as on the 900-px photo
        whole, whole_mask = make_defect(photo, kind, np.random.default_rng([5, len(kind)]))
        assert mask.sum() < 0.2 * whole_mask.sum()
