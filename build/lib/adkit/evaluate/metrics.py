"""Evaluation metrics shared by every model: image/pixel AUROC, AU-PRO, F1-max, per-type AUROC.

Plain numpy/scipy, no framework. Every metric treats equal scores as ONE threshold step (tied
pixels or images enter together), so results never depend on the order of the inputs.

Labels: 0 = good, 1 = defect. Masks: [N, H, W] of {0, 1}; maps: [N, H, W] scores (float32 is
fine: maps are never copied to float64). A metric that is undefined for its input (a single
class, no defect region) returns nan; ``evaluate`` reports it as None.
"""
import math

import numpy as np
from scipy import ndimage

DEFAULT_FPR_LIMIT = 0.3

# 8-connectivity inside each image plane and no link between images: labelling the whole
# [N, H, W] stack at once must not merge regions that sit at the same place in two images.
_PER_IMAGE_8_CONNECTIVITY = np.zeros((3, 3, 3), dtype=bool)
_PER_IMAGE_8_CONNECTIVITY[1] = True


# ----------------------------------------------------------------------------- image level

def image_auroc(labels, scores) -> float:
    """ROC AUC of image scores; nan (not an exception) when only one class is present.

    Returning nan lets a caller evaluate e.g. a split without defects and report the value as
    missing instead of crashing half-way through an evaluation."""
    labels, scores = _image_inputs(labels, scores)
    return _auroc(np.sort(scores[~labels]), scores[labels])


def f1_max(labels, scores):
    """Best F1 over all thresholds (defect predicted when score >= threshold).

    Returns (f1, threshold); the threshold is an actual score, the highest one reaching the
    best F1 (fewest false alarms among equals). (nan, nan) when there is no defect image."""
    labels, scores = _image_inputs(labels, scores)
    n_defect = int(labels.sum())
    if n_defect == 0:
        return math.nan, math.nan
    counts = np.column_stack([labels, ~labels]).astype(np.int64)
    thresholds, cumulative = _cumulative_by_threshold(scores, counts)
    true_pos, false_pos = cumulative[:, 0], cumulative[:, 1]
    f1 = 2.0 * true_pos / (true_pos + false_pos + n_defect)  # = 2TP / (2TP + FP + FN)
    best = int(np.argmax(f1))  # thresholds descend, so the first maximum is the highest one
    return float(f1[best]), float(thresholds[best])


def per_type_auroc(defect_types, labels, scores) -> dict:
    """{defect type: image AUROC of the good images plus the images of that type}."""
    labels, scores = _image_inputs(labels, scores)
    types = _type_names(defect_types, labels.size)
    good = types == "good"
    return {str(name): image_auroc(labels[good | (types == name)], scores[good | (types == name)])
            for name in sorted(set(types.tolist()) - {"good"})}


# ----------------------------------------------------------------------------- pixel level

def pixel_auroc(masks, maps) -> float:
    """ROC AUC over all pixels of all images; nan without good or without defect pixels."""
    masks, maps = _pixel_inputs(masks, maps)
    return _auroc(np.sort(maps[~masks]), maps[masks])


def aupro(masks, maps, fpr_limit=DEFAULT_FPR_LIMIT) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit``, as in the MVTec AD evaluation.

    Ground-truth regions are the 8-connected components of each image's mask. For a threshold
    t, PRO(t) is the mean over ALL regions of the fraction of the region scoring >= t, and
    FPR(t) the fraction of all good pixels (mask 0, in any image) scoring >= t. The exact
    curve is integrated with the trapezoid rule up to FPR = fpr_limit (the end point
    interpolated linearly) and divided by fpr_limit. nan if there is no defect region."""
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    masks, maps = _pixel_inputs(masks, maps)
    return _pro_area(_pro_curve(masks, maps, np.sort(maps[~masks])), fpr_limit)


# ----------------------------------------------------------------------------- everything

def decision_metrics(labels, scores, threshold, defect_types) -> dict:
    """What a pass/fail line does at ``threshold`` (defect when score >= threshold): overall
    accuracy, precision, recall, F1 and the confusion counts, and per defect type the count, how
    many were flagged and the fraction judged right (for 'good', the fraction passed).
    Undefined ratios (no predicted or no true defects) are None."""
    labels, scores = _image_inputs(labels, scores)
    types = _type_names(defect_types, labels.size)
    flagged = scores >= threshold
    tp = int(np.sum(flagged & labels))
    fp = int(np.sum(flagged & ~labels))
    fn = int(np.sum(~flagged & labels))
    tn = int(np.sum(~flagged & ~labels))
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fn else None
    per_type = {}
    for name in sorted(set(types.tolist())):
        members = types == name
        correct = flagged[members] == labels[members]
        per_type[name] = {"count": int(members.sum()), "predicted_defect": int(flagged[members].sum()),
                          "accuracy": float(correct.mean())}
    return {"threshold": float(threshold),
            "overall": {"count": int(labels.size),
                        "accuracy": (tp + tn) / labels.size if labels.size else None,
                        "precision": precision, "recall": recall, "f1": f1,
                        "confusion": {"tn": tn, "fp": fp, "fn": fn, "tp": tp}},
            "per_type": per_type}


def roc_curve(labels, scores):
    """(false-positive rate, true-positive rate) at every distinct score, from (0, 0) to (1, 1)."""
    labels, scores = _image_inputs(labels, scores)
    counts = np.column_stack([labels, ~labels]).astype(np.int64)
    _, cumulative = _cumulative_by_threshold(scores, counts)
    n_pos, n_neg = max(int(labels.sum()), 1), max(int((~labels).sum()), 1)
    return (np.concatenate(([0.0], cumulative[:, 1] / n_neg)),
            np.concatenate(([0.0], cumulative[:, 0] / n_pos)))


def evaluate(labels, scores, defect_types, masks=None, maps=None, mask_available=None,
             fpr_limit=DEFAULT_FPR_LIMIT, with_pro_curve=False):
    """All metrics of one test set as a JSON-ready dict (plain floats, None for undefined).

    Keys: image_auroc, pixel_auroc, aupro, f1_max, f1_threshold (the test-set F1-max
    threshold: an oracle, not a deployment threshold), per_type
    ({type: {"image_auroc", "count"}} for every type except 'good').
    Pixel metrics use the images whose mask is available (``mask_available``, default all) and
    every good image, whose mask counts as all zeros whatever the array holds. They are None
    when masks or maps are missing or no image qualifies. ``with_pro_curve``: return
    (dict, (fpr, pro) of the whole PRO curve or None) instead, for plotting."""
    labels, scores = _image_inputs(labels, scores)
    types = _type_names(defect_types, labels.size)
    f1, threshold = f1_max(labels, scores)
    pixel_auc, pro, curve = _pixel_metrics_of_available(labels, masks, maps, mask_available, fpr_limit)
    result = {
        "image_auroc": json_number(image_auroc(labels, scores)),
        "pixel_auroc": json_number(pixel_auc),
        "aupro": json_number(pro),
        "f1_max": json_number(f1),
        "f1_threshold": json_number(threshold),
        "per_type": {name: {"image_auroc": json_number(auc), "count": int(np.sum(types == name))}
                     for name, auc in per_type_auroc(types, labels, scores).items()},
    }
    return (result, curve) if with_pro_curve else result


def _pixel_metrics_of_available(labels, masks, maps, mask_available, fpr_limit):
    if masks is None or maps is None:
        return None, None, None
    masks, maps = _pixel_inputs(masks, maps)
    if masks.shape[0] != labels.size:
        raise ValueError(f"masks hold {masks.shape[0]} images but there are {labels.size} labels")
    if mask_available is None:
        available = np.ones(labels.size, dtype=bool)
    else:
        available = np.asarray(mask_available, dtype=bool)
        if available.shape != labels.shape:
            raise ValueError(f"mask_available has shape {available.shape}, "
                             f"expected ({labels.size},)")
    used = available | ~labels
    if not used.any():
        return None, None, None
    masks = masks[used]  # boolean indexing copies, so the caller's masks stay untouched
    masks[~labels[used]] = False
    if not used.all():
        maps = maps[used]
    good_sorted = np.sort(maps[~masks])  # the one big sort, shared by both metrics
    curve = _pro_curve(masks, maps, good_sorted)
    return _auroc(good_sorted, maps[masks]), _pro_area(curve, fpr_limit), curve


# ----------------------------------------------------------------------------- internals

def _auroc(negatives_sorted, positives) -> float:
    """P(positive > negative) + P(positive == negative) / 2, i.e. the Mann-Whitney ROC AUC.

    Counting with a binary search over the sorted negatives needs no float64 copy of the
    whole map stack and gives ties exactly half credit."""
    if negatives_sorted.size == 0 or positives.size == 0:
        return math.nan
    below = np.searchsorted(negatives_sorted, positives, side="left")
    below_or_equal = np.searchsorted(negatives_sorted, positives, side="right")
    ordered_pairs = below.sum(dtype=np.int64) + 0.5 * (below_or_equal - below).sum(dtype=np.int64)
    return float(ordered_pairs / (float(negatives_sorted.size) * positives.size))


def _pro_area(curve, fpr_limit) -> float:
    return math.nan if curve is None else area_up_to(*curve, fpr_limit) / fpr_limit


def _pro_curve(masks, maps, good_sorted):
    """The exact PRO curve as (fpr, pro) from (0, 0) to (1, 1); None without regions."""
    region_of_pixel = ndimage.label(masks, structure=_PER_IMAGE_8_CONNECTIVITY)[0][masks]
    if region_of_pixel.size == 0 or good_sorted.size == 0:
        return None
    region_sizes = np.bincount(region_of_pixel)  # labels are 1..K; index 0 unused
    n_regions = region_sizes.size - 1
    # A pixel of region r adds 1 / (K * |r|) to PRO once the threshold reaches its score.
    pro_weight = 1.0 / (n_regions * region_sizes[region_of_pixel].astype(np.float64))
    thresholds, pro_at = _cumulative_by_threshold(maps[masks], pro_weight)
    pro_above = np.concatenate(([0.0], pro_at[:-1]))

    # Between two defect-score thresholds only good pixels enter (a horizontal run of the
    # curve); at a threshold, its defect pixels and the good pixels tied with them enter
    # together. So two points per threshold ("just above" and "at") trace the exact curve
    # that a step at every distinct pixel score would give, without sorting defect and good
    # pixels together.
    n_good = good_sorted.size
    fpr_above = (n_good - np.searchsorted(good_sorted, thresholds, side="right")) / n_good
    fpr_at = (n_good - np.searchsorted(good_sorted, thresholds, side="left")) / n_good
    fpr = np.concatenate(([0.0], np.column_stack([fpr_above, fpr_at]).ravel(), [1.0]))
    pro = np.concatenate(([0.0], np.column_stack([pro_above, pro_at]).ravel(), [1.0]))
    return fpr, pro


def area_up_to(x, y, x_limit) -> float:
    """Trapezoid area under the polyline (x, y), x non-decreasing from 0 to >= x_limit, cut at
    x_limit with the end point interpolated linearly on the crossing segment."""
    inside = int(np.searchsorted(x, x_limit, side="right"))
    xs, ys = x[:inside], y[:inside]
    if xs[-1] < x_limit:
        x0, x1, y0, y1 = x[inside - 1], x[inside], y[inside - 1], y[inside]
        xs = np.append(xs, x_limit)
        ys = np.append(ys, y0 + (y1 - y0) * (x_limit - x0) / (x1 - x0))
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) / 2.0))


def _cumulative_by_threshold(scores, weights):
    """Distinct scores in descending order and, for each, the summed weights of all scores >=
    it (one sort; a tie group is reported once, after all its members)."""
    order = np.argsort(scores)[::-1]
    sorted_scores = scores[order]
    cumulative = np.cumsum(weights[order], axis=0)
    last_of_tie = np.append(sorted_scores[1:] != sorted_scores[:-1], True)
    return sorted_scores[last_of_tie], cumulative[last_of_tie]


def _image_inputs(labels, scores):
    labels = _as_binary(labels, "labels")
    scores = np.asarray(scores, dtype=np.float64)
    if labels.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} must be equal 1-D")
    _check_finite(scores, "scores")
    return labels, scores


def _pixel_inputs(masks, maps):
    masks = _as_binary(masks, "masks")
    maps = np.asarray(maps)
    if masks.ndim != 3 or masks.shape != maps.shape:
        raise ValueError(f"masks {masks.shape} and maps {maps.shape} must both be [N, H, W]")
    _check_finite(maps, "maps")
    return masks, maps


def _as_binary(values, name):
    values = np.asarray(values)
    if values.dtype != bool:
        if np.any((values != 0) & (values != 1)):
            raise ValueError(f"{name} must hold only 0 and 1")
        values = values != 0
    return values


def _check_finite(values, name):
    if not np.isfinite(values).all():
        raise ValueError(f"{name} contain NaN or infinite values")


def _type_names(defect_types, count):
    types = np.asarray(defect_types, dtype=str)
    if types.shape != (count,):
        raise ValueError(f"defect_types has shape {types.shape}, expected ({count},)")
    return types


def json_number(value):
    """JSON-ready float; nan (undefined metric) becomes None."""
    if value is None or math.isnan(value):
        return None
    return float(value)
