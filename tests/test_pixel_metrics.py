"""adkit.evaluate.pixel_metrics against independent references: scikit-learn's ROC AUC, a brute-force PRO
curve (cv2 region labelling, one pass per threshold), the exact in-memory adkit.evaluate.metrics on
full-size stacks, and hand-derived sPRO cases."""
import math

import cv2
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from adkit.evaluate import metrics
from adkit.evaluate.pixel_metrics import LOCO_FPR_LIMITS, PixelMetricAccumulator, saturation_area

SIZES = [(37, 53), (64, 48), (50, 50), (20, 90)]


# ----------------------------------------------------------------------------- helpers / references

def random_images(seed, sizes=SIZES, levels=None, good_images=1):
    """(maps, masks): defect images with random blob masks and maps that score defects higher
    on average, plus ``good_images`` all-good images; ``levels``: quantise maps to k/levels."""
    rng = np.random.default_rng(seed)
    maps, masks = [], []
    for i, (h, w) in enumerate(sizes):
        mask = np.zeros((h, w), dtype=np.uint8)
        if i >= good_images:
            for _ in range(rng.integers(1, 4)):
                center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
                cv2.circle(mask, center, int(rng.integers(1, 8)), 1, -1)
        mask = mask.astype(bool)
        amap = rng.random((h, w)) + 0.6 * mask * rng.random((h, w))
        amap = (amap / 1.6).astype(np.float32)
        if levels is not None:
            amap = (np.round(amap * levels) / levels).astype(np.float32)
        maps.append(amap)
        masks.append(mask)
    return maps, masks


def accumulate(maps, masks, lo=None, hi=None, bins=2 ** 20, defects=None):
    lo = min(float(m.min()) for m in maps) if lo is None else lo
    hi = max(float(m.max()) for m in maps) if hi is None else hi
    acc = PixelMetricAccumulator(lo, hi, bins)
    for i, (amap, mask) in enumerate(zip(maps, masks)):
        acc.add(amap, mask, None if defects is None else defects[i])
    return acc


def sklearn_pixel_auroc(maps, masks):
    return roc_auc_score(np.concatenate([m.ravel() for m in masks]),
                         np.concatenate([m.ravel() for m in maps]).astype(np.float64))


def brute_force_aupro(maps, masks, fpr_limit, thresholds=None):
    """One pass per threshold (default: every distinct score, descending): FPR over all good
    pixels and mean per-region overlap, regions by cv2 (8-connectivity, per image); trapezoids
    segment by segment, the one crossing fpr_limit cut with linear interpolation."""
    regions, good = [], []
    for amap, mask in zip(maps, masks):
        n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        regions += [amap[labels == k].astype(np.float64) for k in range(1, n)]
        good.append(amap[~mask].astype(np.float64))
    good = np.concatenate(good)
    if thresholds is None:
        thresholds = np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]
    xs, ys = [0.0], [0.0]
    for t in thresholds:
        xs.append(np.mean(good >= t))
        ys.append(np.mean([np.mean(r >= t) for r in regions]))
    xs.append(1.0)
    ys.append(1.0)
    area = 0.0
    for x0, x1, y0, y1 in zip(xs[:-1], xs[1:], ys[:-1], ys[1:]):
        if x1 <= fpr_limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            if x0 < fpr_limit:
                y_end = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
                area += (fpr_limit - x0) * (y0 + y_end) / 2
            break
    return area / fpr_limit


# ----------------------------------------------------------------------------- pixel AUROC

def test_pixel_auroc_matches_sklearn_on_images_of_different_sizes():
    worst = 0.0
    for seed in range(3):
        maps, masks = random_images(seed)
        diff = abs(accumulate(maps, masks).pixel_auroc() - sklearn_pixel_auroc(maps, masks))
        worst = max(worst, diff)
    assert worst < 1e-6


def test_pixel_auroc_with_ties_is_exact_when_levels_fall_in_distinct_bins():
    maps, masks = random_images(3, levels=4)  # scores k/4 in [0, 1]: five levels, heavy ties
    acc = accumulate(maps, masks, lo=0.0, hi=1.0)
    assert len(np.unique(np.concatenate([m.ravel() for m in maps]))) == 5
    assert abs(acc.pixel_auroc() - sklearn_pixel_auroc(maps, masks)) < 1e-12


# ----------------------------------------------------------------------------- AU-PRO

@pytest.mark.parametrize("fpr_limit", [0.05, 0.3, 1.0])
def test_aupro_matches_brute_force_on_quantised_maps(fpr_limit):
    maps, masks = random_images(4, levels=40)  # 41 levels k/40: distinct bins -> exact
    acc = accumulate(maps, masks, lo=0.0, hi=1.0)
    assert abs(acc.aupro(fpr_limit) - brute_force_aupro(maps, masks, fpr_limit)) < 1e-12


def test_aupro_matches_brute_force_on_continuous_maps_of_different_sizes():
    maps, masks = random_images(5, sizes=[(30, 41), (25, 33), (40, 22)])
    expected = brute_force_aupro(maps, masks, 0.3)  # every distinct score is a threshold
    assert abs(accumulate(maps, masks).aupro(0.3) - expected) < 1e-5


@pytest.mark.parametrize("fpr_limit", [0.05, 0.3, 1.0])
def test_aupro_and_pixel_auroc_match_exact_metrics_on_same_size_stacks(fpr_limit):
    maps, masks = random_images(6, sizes=[(64, 64)] * 5, good_images=2)
    acc = accumulate(maps, masks)
    stack_maps, stack_masks = np.stack(maps), np.stack(masks)
    assert abs(acc.aupro(fpr_limit) - metrics.aupro(stack_masks, stack_maps, fpr_limit)) < 1e-5
    assert abs(acc.pixel_auroc() - metrics.pixel_auroc(stack_masks, stack_maps)) < 1e-6


def test_regions_are_8_connected():
    # A diagonal chain of 3 pixels is ONE region (one pixel found: 1/3) beside a found 1-pixel
    # region: PRO at t=1 is (1/3 + 1) / 2; 4-connectivity would give 2 of 4 regions = 1/2.
    mask = np.zeros((6, 6), dtype=bool)
    mask[[0, 1, 2], [0, 1, 2]] = True
    mask[5, 5] = True
    amap = np.zeros((6, 6), dtype=np.float32)
    amap[0, 0] = amap[5, 5] = 1.0
    acc = PixelMetricAccumulator(0.0, 1.0, 16).add(amap, mask)
    assert acc.n_regions == 2
    np.testing.assert_allclose(acc.pro_curve()[1], [0.0, 2 / 3, 1.0])


def test_regions_in_different_images_are_not_merged():
    # The same 2x2 defect at the same place in two images: two regions, one found, one not.
    mask = np.zeros((6, 6), dtype=bool)
    mask[1:3, 1:3] = True
    found = np.where(mask, 1.0, 0.0).astype(np.float32)
    acc = PixelMetricAccumulator(0.0, 1.0, 16)
    acc.add(found, mask)
    acc.add(np.zeros((6, 6), np.float32), mask)
    assert acc.n_regions == 2
    fpr, pro = acc.pro_curve()
    np.testing.assert_allclose(fpr, [0.0, 0.0, 1.0])
    np.testing.assert_allclose(pro, [0.0, 0.5, 1.0])


# ----------------------------------------------------------------------------- full resolution

@pytest.mark.parametrize("size", [256, 512])
def test_upsampled_maps_match_exact_metrics_at_full_size(size):
    rng = np.random.default_rng(7)
    low_res = [rng.random((32, 32)).astype(np.float32) for _ in range(4)]
    lo, hi = min(float(m.min()) for m in low_res), max(float(m.max()) for m in low_res)
    maps, masks = [], []
    for i, small in enumerate(low_res):
        amap = cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)
        mask = np.zeros((size, size), dtype=np.uint8)
        if i > 0:  # image 0 is good
            def at(x):  # shapes drawn in 256-px coordinates, scaled to the size
                return int(x * size / 256)
            cv2.circle(mask, (at(60 * i), at(90)), at(20), 1, -1)
            cv2.rectangle(mask, (at(20), at(150)), (at(40 + 30 * i), at(200)), 1, -1)
            amap = amap + 0.3 * mask  # defects score higher; the range grows accordingly
        maps.append(amap.astype(np.float32))
        masks.append(mask.astype(bool))
    acc = accumulate(maps, masks, lo=lo, hi=hi + 0.3)
    stack_maps, stack_masks = np.stack(maps), np.stack(masks)
    assert abs(acc.aupro() - metrics.aupro(stack_masks, stack_maps)) < 1e-5
    assert abs(acc.pixel_auroc() - metrics.pixel_auroc(stack_masks, stack_maps)) < 1e-5


# ----------------------------------------------------------------------------- sPRO by hand

def one_defect_image(saturation):
    """4x5 image: a 4-pixel defect (row 0, cols 0-3) with two pixels at 1.0 and two at 0.0;
    of the 16 good pixels, four score 0.5 and the rest 0.0."""
    amap = np.zeros((4, 5), dtype=np.float32)
    mask = np.zeros((4, 5), dtype=bool)
    mask[0, :4] = True
    amap[0, :2] = 1.0
    amap[2, :4] = 0.5
    return amap, mask, [(mask, saturation)]


def test_spro_saturated_defect_counts_as_fully_found():
    # s = 2: both top pixels above t=1 -> sPRO 1 although the overlap is 50 %.
    amap, mask, defects = one_defect_image(2)
    acc = PixelMetricAccumulator(0.0, 1.0, 8).add(amap, mask, defects)
    fpr, spro = acc.spro_curve()
    np.testing.assert_allclose(fpr, [0.0, 0.0, 0.25, 1.0])
    np.testing.assert_allclose(spro, [0.0, 1.0, 1.0, 1.0])
    assert acc.au_spro(0.3) == pytest.approx(1.0, abs=1e-12)
    # PRO of the same image: curve (0,0) (0,.5) (.25,.5) (1,1); at 0.3, pro = .5 + .5 * .05/.75.
    pro_end = 0.5 + 0.5 * 0.05 / 0.75
    expected = (0.25 * 0.5 + 0.05 * (0.5 + pro_end) / 2) / 0.3
    assert acc.aupro(0.3) == pytest.approx(expected, abs=1e-12)


def test_spro_unsaturated_defect():
    # s = 3: two of three needed pixels above t=1 -> 2/3 up to FPR 0.25.
    amap, mask, defects = one_defect_image(3)
    acc = PixelMetricAccumulator(0.0, 1.0, 8).add(amap, mask, defects)
    fpr, spro = acc.spro_curve()
    np.testing.assert_allclose(fpr, [0.0, 0.0, 0.25, 1.0])
    np.testing.assert_allclose(spro, [0.0, 2 / 3, 2 / 3, 1.0])
    assert acc.au_spro(0.25) == pytest.approx(2 / 3, abs=1e-12)
    spro_end = 2 / 3 + (1 / 3) * 0.05 / 0.75
    expected = (0.25 * 2 / 3 + 0.05 * (2 / 3 + spro_end) / 2) / 0.3
    assert acc.au_spro(0.3) == pytest.approx(expected, abs=1e-12)
    assert acc.au_spro(1.0) == pytest.approx(0.25 * 2 / 3 + 0.75 * (2 / 3 + 1) / 2, abs=1e-12)


def test_spro_two_defects_with_different_saturation_areas_is_their_mean():
    amap = np.zeros((5, 5), dtype=np.float32)
    first = np.zeros((5, 5), dtype=bool)
    first[0, :3] = True           # 3 pixels, s = 1: one pixel at 1.0 saturates it at t = 1
    amap[0, 0] = 1.0
    second = np.zeros((5, 5), dtype=bool)
    second[4, :4] = True          # 4 pixels, s = 4: scores 1.0, 0.5, 0.5, 0.0
    amap[4, :3] = [1.0, 0.5, 0.5]
    amap[2, :2] = 0.5             # two of the 18 good pixels at 0.5
    acc = PixelMetricAccumulator(0.0, 1.0, 4).add(amap, first | second, [(first, 1), (second, 4)])
    assert acc.n_defects == 2
    # t=1: fpr 0, spro (1 + 1/4)/2; t=.5: fpr 2/18, spro (1 + 3/4)/2; t=0: (1, 1).
    fpr, spro = acc.spro_curve()
    np.testing.assert_allclose(fpr, [0.0, 0.0, 2 / 18, 1.0])
    np.testing.assert_allclose(spro, [0.0, 0.625, 0.875, 1.0])
    assert acc.au_spro(2 / 18) == pytest.approx((0.625 + 0.875) / 2, abs=1e-12)


@pytest.mark.parametrize("good_defects", [None, []])
def test_good_image_adds_only_false_positives(good_defects):
    amap, mask, defects = one_defect_image(2)
    good = np.zeros((4, 5), dtype=np.float32)
    good[1, 1:5] = 1.0            # 4 of its 20 pixels at 1.0
    acc = PixelMetricAccumulator(0.0, 1.0, 8).add(amap, mask, defects)
    acc.add(good, np.zeros((4, 5), dtype=bool), good_defects)
    assert acc.n_defects == 1 and acc.n_regions == 1
    # 36 good pixels: t=1 -> 4 FP, t=.5 -> 8 FP; sPRO is 1 from t=1 on.
    fpr, spro = acc.spro_curve()
    np.testing.assert_allclose(fpr, [0.0, 4 / 36, 8 / 36, 1.0])
    np.testing.assert_allclose(spro, [0.0, 1.0, 1.0, 1.0])
    assert acc.au_spro(0.3) == pytest.approx((4 / 36 * 0.5 + (0.3 - 4 / 36)) / 0.3, abs=1e-12)


def test_saturation_area_rule():
    assert saturation_area(1000, 0.5, relative=True) == 500
    assert saturation_area(7, 0.5, relative=True) == 3        # int() truncates
    assert saturation_area(1000, 200, relative=False) == 200
    assert saturation_area(150, 200, relative=False) == 150   # capped at the defect's area
    assert saturation_area(3, 0.1, relative=True) == 1        # int(0.3) = 0 -> floor of 1
    assert saturation_area(0, 5, relative=False) == 1
    assert LOCO_FPR_LIMITS == (0.01, 0.05, 0.1, 0.3, 1.0)


def test_relative_and_absolute_saturation_through_the_accumulator():
    amap, mask, _ = one_defect_image(None)
    relative = saturation_area(int(mask.sum()), 0.5, relative=True)    # 2 -> saturated at t=1
    absolute = saturation_area(int(mask.sum()), 3, relative=False)     # 3 -> 2/3 at t=1
    tiny = saturation_area(int(mask.sum()), 0.1, relative=True)        # floor 1 -> saturated
    results = {}
    for name, s in [("relative", relative), ("absolute", absolute), ("tiny", tiny)]:
        acc = PixelMetricAccumulator(0.0, 1.0, 8).add(amap, mask, [(mask, s)])
        results[name] = acc.au_spro(0.25)
    assert results == pytest.approx({"relative": 1.0, "absolute": 2 / 3, "tiny": 1.0}, abs=1e-12)


def test_spro_with_ties_at_the_saturation_boundary():
    # 4-pixel defect, all at 0.5, s = 2: the tie group enters at once -> sPRO jumps 0 -> 1.
    amap = np.zeros((3, 4), dtype=np.float32)
    mask = np.zeros((3, 4), dtype=bool)
    mask[0] = True
    amap[0] = 0.5
    acc = PixelMetricAccumulator(0.0, 1.0, 8).add(amap, mask, [(mask, 2)])
    fpr, spro = acc.spro_curve()
    np.testing.assert_allclose(fpr, [0.0, 0.0, 1.0])
    np.testing.assert_allclose(spro, [0.0, 1.0, 1.0])


# ----------------------------------------------------------------------------- merge, edges, nan

def test_merge_equals_one_accumulator_fed_with_both_sets():
    maps, masks = random_images(8)
    defects = [[(m, saturation_area(int(m.sum()), 0.5, True))] if m.any() else [] for m in masks]
    lo, hi = 0.0, 1.0
    whole = accumulate(maps, masks, lo, hi, 2 ** 12, defects)
    first = accumulate(maps[:2], masks[:2], lo, hi, 2 ** 12, defects[:2])
    second = accumulate(maps[2:], masks[2:], lo, hi, 2 ** 12, defects[2:])
    merged = first.merge(second)
    assert merged is first
    np.testing.assert_array_equal(merged.good_hist, whole.good_hist)
    np.testing.assert_array_equal(merged.defect_hist, whole.defect_hist)
    np.testing.assert_allclose(merged.pro_weight, whole.pro_weight, rtol=1e-12)
    np.testing.assert_allclose(merged.spro_weight, whole.spro_weight, rtol=1e-12)
    assert (merged.n_regions, merged.n_defects) == (whole.n_regions, whole.n_defects)
    assert merged.pixel_auroc() == pytest.approx(whole.pixel_auroc(), abs=1e-12)
    assert merged.aupro() == pytest.approx(whole.aupro(), abs=1e-12)
    assert merged.au_spro(0.3) == pytest.approx(whole.au_spro(0.3), abs=1e-12)
    with pytest.raises(ValueError):
        merged.merge(PixelMetricAccumulator(lo, hi, 2 ** 11))


def test_lo_equal_hi_is_one_bin():
    maps, masks = random_images(9, sizes=[(16, 16)] * 3)
    constant = [np.full_like(m, 0.25) for m in maps]
    acc = accumulate(constant, masks, lo=0.25, hi=0.25)
    assert acc.pixel_auroc() == 0.5
    # Everything enters at once: the diagonal, area 0.3**2 / 2 over 0.3.
    assert acc.aupro(0.3) == pytest.approx(0.15, abs=1e-12)
    exact = metrics.aupro(np.stack(masks), np.stack(constant), 0.3)
    assert acc.aupro(0.3) == pytest.approx(exact, abs=1e-12)
    # Other values land in the same single bin.
    assert accumulate(maps, masks, lo=0.25, hi=0.25).aupro(0.3) == pytest.approx(0.15, abs=1e-12)


def test_values_outside_the_range_are_clipped():
    maps, masks = random_images(10, levels=10)
    stretched = [m * 3.0 - 1.0 for m in maps]       # in [-1, 2]
    clipped = [np.clip(m, 0.0, 1.0) for m in stretched]
    outside = accumulate(stretched, masks, lo=0.0, hi=1.0)
    inside = accumulate(clipped, masks, lo=0.0, hi=1.0)
    np.testing.assert_array_equal(outside.good_hist, inside.good_hist)
    np.testing.assert_array_equal(outside.defect_hist, inside.defect_hist)
    assert outside.pixel_auroc() == pytest.approx(sklearn_pixel_auroc(clipped, masks), abs=1e-12)
    assert outside.aupro() == pytest.approx(brute_force_aupro(clipped, masks, 0.3), abs=1e-12)


def test_undefined_metrics_are_nan():
    maps, masks = random_images(11, sizes=[(8, 8)] * 2, good_images=2)
    only_good = accumulate(maps, masks, defects=[[], []])
    assert math.isnan(only_good.pixel_auroc())
    assert math.isnan(only_good.aupro())
    assert math.isnan(only_good.au_spro(0.3))
    assert only_good.pro_curve() is None and only_good.spro_curve() is None

    all_defect = PixelMetricAccumulator(0.0, 1.0, 16)
    full = np.ones((4, 4), dtype=bool)
    all_defect.add(np.random.default_rng(0).random((4, 4)), full, [(full, 4)])
    assert math.isnan(all_defect.pixel_auroc())
    assert math.isnan(all_defect.aupro()) and math.isnan(all_defect.au_spro(0.3))

    # Masks but no sPRO annotations: AU-PRO defined, AU-sPRO not.
    maps, masks = random_images(12)
    no_spro = accumulate(maps, masks)
    assert not math.isnan(no_spro.aupro()) and math.isnan(no_spro.au_spro(0.3))


def test_invalid_inputs_are_rejected():
    with pytest.raises(ValueError):
        PixelMetricAccumulator(1.0, 0.0)
    with pytest.raises(ValueError):
        PixelMetricAccumulator(0.0, 1.0, 0)
    acc = PixelMetricAccumulator(0.0, 1.0, 16)
    amap, mask = np.zeros((4, 4), np.float32), np.zeros((4, 4), bool)
    with pytest.raises(ValueError):
        acc.add(amap, np.zeros((4, 5), bool))
    with pytest.raises(ValueError):
        acc.add(np.full((4, 4), np.nan), mask)
    defect = mask.copy()
    defect[0, 0] = True
    with pytest.raises(ValueError):   # a defect outside defect_mask would count as good pixels
        acc.add(amap, mask, [(defect, 1)])
    with pytest.raises(ValueError):
        acc.add(amap, defect, [(defect, 0)])
    with pytest.raises(ValueError):
        acc.aupro(0.0)
    assert acc.n_regions == 0 and acc.good_hist.sum() == 0  # nothing half-added


# ----------------------------------------------------------------------------- memory

def test_memory_does_not_grow_with_the_number_of_images():
    bins = 2 ** 20
    acc = PixelMetricAccumulator(0.0, 1.0, bins)
    expected = 4 * bins * 8  # two int64 histograms and two float64 weight arrays
    assert acc.nbytes == expected
    rng = np.random.default_rng(13)
    mask = np.zeros((1024, 1024), dtype=bool)
    mask[100:300, 200:500] = True
    amap = rng.random((1024, 1024), dtype=np.float32)
    for _ in range(20):
        acc.add(amap, mask, [(mask, 1000)])
    assert acc.nbytes == expected
    arrays = (acc.good_hist, acc.defect_hist, acc.pro_weight, acc.spro_weight)
    assert all(a.shape == (bins,) for a in arrays)
    assert acc.good_hist.sum() + acc.defect_hist.sum() == 20 * 1024 * 1024
    assert (acc.n_regions, acc.n_defects) == (20, 20)
