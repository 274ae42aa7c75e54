"""adkit.evaluate.metrics against independent references: brute-force pair counts, a brute-force PRO
curve with its own flood-fill region labelling, hand-derived AU-PRO cases and scikit-learn."""
import json
import math
from collections import deque

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from adkit.evaluate import metrics


# ----------------------------------------------------------------------------- references

def brute_force_auroc(labels, scores):
    """Fraction of (defect, good) pairs with defect score > good score; ties count 1/2."""
    labels, scores = np.asarray(labels).ravel(), np.asarray(scores, dtype=np.float64).ravel()
    positives, negatives = scores[labels == 1], scores[labels == 0]
    total = 0.0
    for p in positives:
        for n in negatives:
            total += 1.0 if p > n else 0.5 if p == n else 0.0
    return total / (positives.size * negatives.size)


def flood_fill_regions(mask):
    """List of regions (lists of (row, col)) of one 2-D mask, 8-connectivity, by BFS."""
    seen = np.zeros(mask.shape, dtype=bool)
    regions = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        queue, region = deque([start]), []
        while queue:
            r, c = queue.popleft()
            region.append((r, c))
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    rr, cc = r + dr, c + dc
                    if (0 <= rr < mask.shape[0] and 0 <= cc < mask.shape[1]
                            and mask[rr, cc] and not seen[rr, cc]):
                        seen[rr, cc] = True
                        queue.append((rr, cc))
        regions.append(region)
    return regions


def brute_force_aupro(masks, maps, fpr_limit):
    """Loop over every distinct score as a threshold; per-region overlaps and FPR in plain
    numpy; segment-by-segment trapezoids, the last one cut at fpr_limit."""
    region_scores = [np.array([maps[i][p] for p in region])
                     for i in range(len(masks)) for region in flood_fill_regions(masks[i])]
    good_scores = maps[masks == 0]
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        fpr = np.mean(good_scores >= t)
        pro = np.mean([np.mean(s >= t) for s in region_scores])
        points.append((fpr, pro))
    points.append((1.0, 1.0))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        if x0 >= fpr_limit:
            break
        if x1 > fpr_limit:
            y1 = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            x1 = fpr_limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / fpr_limit


def brute_force_f1_max(labels, scores):
    """Best F1 over every score used as threshold; highest threshold among equal F1."""
    best = (-1.0, None)
    for t in sorted(set(scores), reverse=True):
        predicted = scores >= t
        tp = np.sum(predicted & (labels == 1))
        fp = np.sum(predicted & (labels == 0))
        fn = np.sum(~predicted & (labels == 1))
        f1 = 2 * tp / (2 * tp + fp + fn)
        if f1 > best[0] + 1e-15:
            best = (f1, t)
    return best


def random_masks(rng, n, h, w, density):
    masks = (rng.random((n, h, w)) < density).astype(np.uint8)
    masks[0] = 0  # one all-good image, like MVTec's 'good' test images
    return masks


# ----------------------------------------------------------------------------- image AUROC

@pytest.mark.parametrize("seed", range(5))
def test_image_auroc_matches_pair_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 60)
    scores = rng.integers(0, 8, 60) / 7.0  # few levels: many ties within and across classes
    assert metrics.image_auroc(labels, scores) == pytest.approx(
        brute_force_auroc(labels, scores), abs=1e-12)


def test_image_auroc_single_class_is_nan():
    assert math.isnan(metrics.image_auroc([0, 0, 0], [0.1, 0.5, 0.2]))
    assert math.isnan(metrics.image_auroc([1, 1], [0.1, 0.5]))


def test_image_auroc_rejects_non_binary_labels_and_nan_scores():
    with pytest.raises(ValueError, match="labels"):
        metrics.image_auroc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        metrics.image_auroc([0, 1], [0.1, np.nan])


# ----------------------------------------------------------------------------- pixel AUROC

def test_pixel_auroc_matches_pair_count_small():
    rng = np.random.default_rng(7)
    masks = random_masks(rng, 3, 6, 7, 0.3)
    maps = (rng.integers(0, 5, masks.shape) / 4.0).astype(np.float32)
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(
        brute_force_auroc(masks, maps), abs=1e-12)


def test_pixel_auroc_matches_sklearn_on_float32_stack():
    rng = np.random.default_rng(8)
    masks = random_masks(rng, 6, 40, 40, 0.1)
    maps = (rng.random(masks.shape) + 0.5 * masks).astype(np.float32)
    maps[:, :5] = 0.25  # a block of tied scores
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)


def test_pixel_auroc_without_defect_pixels_is_nan():
    assert math.isnan(metrics.pixel_auroc(np.zeros((2, 3, 3)), np.ones((2, 3, 3))))


# ----------------------------------------------------------------------------- AU-PRO by hand

def test_aupro_perfect_map_is_one():
    # map == mask: at t=1 every region is covered with FPR 0, curve (0,0)->(0,1)->(1,1).
    rng = np.random.default_rng(0)
    masks = random_masks(rng, 3, 10, 10, 0.2)
    assert metrics.aupro(masks, masks.astype(np.float32)) == pytest.approx(1.0)


def test_aupro_constant_map_is_diagonal():
    # All pixels tie: one step (0,0)->(1,1). Area up to 0.3 is 0.3*0.3/2 = 0.045 -> /0.3 = 0.15;
    # with fpr_limit=1 the area is 0.5.
    masks = np.zeros((2, 8, 8), np.uint8)
    masks[1, 2:4, 2:5] = 1
    maps = np.full(masks.shape, 0.7, np.float32)
    assert metrics.aupro(masks, maps) == pytest.approx(0.15)
    assert metrics.aupro(masks, maps, fpr_limit=1.0) == pytest.approx(0.5)


def two_regions_case():
    # One 8x13 image (104 px). Region A: an L of 3 px scoring 1.0. Region B: 1 px scoring 0.4.
    # 100 good pixels: 20 score 0.6, 80 score 0.0.
    masks = np.zeros((1, 8, 13), np.uint8)
    maps = np.zeros((1, 8, 13), np.float32)
    for r, c in [(1, 1), (1, 2), (2, 1)]:
        masks[0, r, c], maps[0, r, c] = 1, 1.0
    masks[0, 5, 8], maps[0, 5, 8] = 1, 0.4
    maps[0, 6:8, 0:10] = 0.6  # 20 good pixels
    return masks, maps


def test_aupro_two_regions_of_different_size():
    # Curve: t=1.0 -> (FPR 0, PRO mean(1, 0) = 0.5); t=0.6 -> (0.2, 0.5);
    # t=0.4 -> (0.2, 1.0); t=0 -> (1, 1).
    # Area to 0.3 = 0.2*0.5 + 0.1*1.0 = 0.2 -> /0.3 = 2/3.
    # (A pixel-weighted overlap, 3/4 instead of 1/2, would give 0.25/0.3 = 0.8333.)
    masks, maps = two_regions_case()
    assert metrics.aupro(masks, maps) == pytest.approx(2 / 3)
    # Limit 0.1 falls inside the first horizontal run: 0.1*0.5/0.1 = 0.5.
    assert metrics.aupro(masks, maps, fpr_limit=0.1) == pytest.approx(0.5)


def tied_region_case():
    # One region of 4 px and 40 of 100 good pixels all score 0.5; the other 60 good score 0.
    masks = np.zeros((1, 8, 13), np.uint8)
    maps = np.zeros((1, 8, 13), np.float32)
    masks[0, 0:2, 0:2] = 1
    maps[0, 0:2, 0:2] = 0.5
    maps[0, 4:8, 0:10] = 0.5  # 40 good pixels tied with the region
    return masks, maps


def test_aupro_ties_move_together_and_end_point_is_interpolated():
    # The tie group enters at once: one straight segment (0,0)->(0.4,1), then (1,1).
    # limit 0.3: PRO(0.3) = 0.75 by interpolation, area 0.3*0.75/2 = 0.1125 -> /0.3 = 0.375.
    # limit 0.4: area 0.4*1/2 = 0.2 -> 0.5.   limit 0.7: 0.2 + 0.3*1 = 0.5 -> /0.7 = 5/7.
    # (Defect pixels ranked before their tied good pixels would wrongly give 1.0.)
    masks, maps = tied_region_case()
    assert metrics.aupro(masks, maps) == pytest.approx(0.375)
    assert metrics.aupro(masks, maps, fpr_limit=0.4) == pytest.approx(0.5)
    assert metrics.aupro(masks, maps, fpr_limit=0.7) == pytest.approx(5 / 7)


def test_aupro_diagonal_pixels_form_one_region():
    # X = {(0,0), (1,1)} touch only diagonally -> ONE region of 2 px, both scoring 1.0.
    # Y = {(5,5)} scores 0.0. Good pixels score 0.5.
    # 8-connectivity: PRO at t=1 is mean(1, 0) = 0.5; curve (0,0)->(0,0.5)->(1,0.5)->(1,1)
    # gives 0.5. Treating X as two regions would give mean(1, 1, 0) = 2/3.
    masks = np.zeros((1, 7, 7), np.uint8)
    maps = np.full((1, 7, 7), 0.5, np.float32)
    for r, c in [(0, 0), (1, 1)]:
        masks[0, r, c], maps[0, r, c] = 1, 1.0
    masks[0, 5, 5], maps[0, 5, 5] = 1, 0.0
    assert metrics.aupro(masks, maps) == pytest.approx(0.5)


def test_aupro_regions_do_not_connect_across_images():
    # Image 0: a 2x2 region at rows/cols 1-2 scoring 1.0. Image 1: one pixel at (2,2), same
    # place, scoring 0.0. Good pixels score 0.5. Two regions: PRO at t=1 is mean(1, 0) = 0.5
    # -> AU-PRO 0.5. Merged through the image axis they would give 4/5 = 0.8.
    masks = np.zeros((2, 5, 5), np.uint8)
    maps = np.full((2, 5, 5), 0.5, np.float32)
    masks[0, 1:3, 1:3], maps[0, 1:3, 1:3] = 1, 1.0
    masks[1, 2, 2], maps[1, 2, 2] = 1, 0.0
    assert metrics.aupro(masks, maps) == pytest.approx(0.5)


def test_aupro_without_regions_is_nan_and_limit_is_checked():
    assert math.isnan(metrics.aupro(np.zeros((2, 4, 4)), np.ones((2, 4, 4))))
    with pytest.raises(ValueError, match="fpr_limit"):
        metrics.aupro(np.ones((1, 2, 2)), np.ones((1, 2, 2)), fpr_limit=0.0)


def test_brute_force_reference_reproduces_hand_cases():
    # The reference itself must agree with the hand-derived answers above.
    assert brute_force_aupro(*two_regions_case(), 0.3) == pytest.approx(2 / 3)
    assert brute_force_aupro(*tied_region_case(), 0.3) == pytest.approx(0.375)


# ----------------------------------------------------------------------------- AU-PRO random

@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 1.0])
def test_aupro_matches_brute_force_on_random_data(seed, fpr_limit):
    rng = np.random.default_rng(100 + seed)
    masks = random_masks(rng, 3, 9, 9, 0.25)  # several regions, many diagonal contacts
    assert sum(len(flood_fill_regions(m)) for m in masks) >= 4
    levels = 6 if seed % 2 else 1000  # even seeds: near-continuous scores; odd: heavy ties
    maps = (rng.integers(0, levels, masks.shape) / levels + 0.3 * masks).astype(np.float32)
    assert metrics.aupro(masks, maps, fpr_limit) == pytest.approx(
        brute_force_aupro(masks, maps, fpr_limit), abs=1e-9)


# ----------------------------------------------------------------------------- F1-max

@pytest.mark.parametrize("seed", range(5))
def test_f1_max_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 40)
    scores = rng.integers(0, 10, 40) / 9.0 + 0.2 * labels
    f1, threshold = metrics.f1_max(labels, scores)
    expected_f1, expected_threshold = brute_force_f1_max(labels, scores)
    assert f1 == pytest.approx(expected_f1, abs=1e-12)
    assert threshold == expected_threshold
    assert threshold in scores


def test_f1_max_hand_case_and_no_defects():
    # Scores 0.9(d) 0.8(g) 0.7(d) 0.1(g): t=0.7 gives TP 2, FP 1, FN 0 -> F1 = 4/5.
    assert metrics.f1_max([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx((0.8, 0.7))
    # 0.9(d) 0.8(g) 0.7(g) 0.6(d) 0.1(g): t=0.9 gives 2*1/(2+0+1) = 2/3 and t=0.6 gives
    # 2*2/(4+2+0) = 2/3 too; the higher threshold 0.9 is chosen.
    assert metrics.f1_max([1, 0, 0, 1, 0], [0.9, 0.8, 0.7, 0.6, 0.1]) == pytest.approx((2 / 3, 0.9))
    f1, threshold = metrics.f1_max([0, 0], [0.3, 0.4])
    assert math.isnan(f1) and math.isnan(threshold)


# ----------------------------------------------------------------------------- per type, evaluate

def image_set():
    types = ["good", "good", "good", "crack", "crack", "hole", "hole"]
    labels = [0, 0, 0, 1, 1, 1, 1]
    scores = [0.1, 0.2, 0.5, 0.9, 0.4, 0.2, 0.3]
    return types, labels, scores


def test_per_type_auroc_uses_good_plus_that_type():
    # crack {0.9, 0.4} vs good {0.1, 0.2, 0.5}: pairs 3 + 2 = 5 of 6.
    # hole  {0.2, 0.3} vs good: 0.2 beats 0.1, ties 0.2 (1/2); 0.3 beats 0.1, 0.2 -> 3.5 of 6.
    result = metrics.per_type_auroc(*image_set())
    assert result == pytest.approx({"crack": 5 / 6, "hole": 3.5 / 6})


def test_evaluate_image_only_gives_none_pixel_metrics():
    types, labels, scores = image_set()
    result = metrics.evaluate(labels, scores, types)
    assert set(result) == {"image_auroc", "pixel_auroc", "aupro", "f1_max", "f1_threshold",
                           "per_type"}
    assert result["image_auroc"] == pytest.approx(brute_force_auroc(labels, scores))
    assert result["pixel_auroc"] is None and result["aupro"] is None
    assert result["per_type"] == {"crack": {"image_auroc": pytest.approx(5 / 6), "count": 2},
                                  "hole": {"image_auroc": pytest.approx(3.5 / 6), "count": 2}}
    json.dumps(result, allow_nan=False)


def test_evaluate_uses_available_masks_and_good_images_only():
    types, labels, scores = image_set()
    rng = np.random.default_rng(3)
    masks = np.zeros((7, 6, 6), np.uint8)
    masks[3:, 1:4, 2:4] = 1
    masks[2] = 1  # a good image flagged without a mask: must count as all zeros
    maps = (rng.random(masks.shape) + 0.4 * masks).astype(np.float32)
    available = np.array([True, True, False, True, True, False, False])  # 'hole' has no masks
    result = metrics.evaluate(labels, scores, types, masks, maps, available)

    used = np.array([True, True, True, True, True, False, False])
    expected_masks = masks[used].copy()
    expected_masks[:3] = 0
    assert result["pixel_auroc"] == pytest.approx(
        roc_auc_score(expected_masks.ravel(), maps[used].ravel()), abs=1e-12)
    assert result["aupro"] == pytest.approx(
        brute_force_aupro(expected_masks, maps[used], 0.3), abs=1e-9)
    assert masks[2].all()  # the caller's array was not modified
    json.dumps(result, allow_nan=False)


def test_evaluate_single_class_and_no_available_masks_give_none():
    masks = np.zeros((2, 4, 4), np.uint8)
    maps = np.zeros((2, 4, 4), np.float32)
    result = metrics.evaluate([1, 1], [0.3, 0.4], ["crack", "crack"], masks, maps, [False, False])
    assert result["image_auroc"] is None
    assert result["pixel_auroc"] is None and result["aupro"] is None
    assert result["per_type"] == {"crack": {"image_auroc": None, "count": 2}}
    assert result["f1_max"] == pytest.approx(1.0) and result["f1_threshold"] == pytest.approx(0.3)
    json.dumps(result, allow_nan=False)
