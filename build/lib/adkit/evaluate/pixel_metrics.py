"""Pixel AUROC, AU-PRO and sPRO at full image resolution with bounded memory, streamed one image
at a time.

The official protocols score anomaly maps upsampled to each image's original size (up to
1600x1100) against full-resolution masks; holding a whole test set of such maps in memory, as
``adkit.evaluate.metrics`` does at the model's size, is not an option. Here every pixel metric is a
(weighted) histogram over ``bins`` equal score bins on a range [lo, hi] known in advance
(bilinear upsampling never leaves the model-size map's [min, max]); a curve is the cumulative sum
of the histograms from the top bin down, i.e. thresholds sit at the bin edges. Pixels in one bin
enter a curve together, like tied scores in ``adkit.evaluate.metrics``, so the result is exact whenever
distinct scores fall in distinct bins, and otherwise as if the scores were quantised to the bins.

Memory is a handful of arrays of ``bins`` entries whatever the number of images; work per image
is O(pixels + bins).

PRO (MVTec AD): ground-truth regions are the 8-connected components of each image's defect
mask; PRO(t) = mean over all regions of the fraction of the region scoring >= t.
sPRO (MVTec LOCO AD): per annotated defect with saturation area s, sPRO(t) = min(TP(t) / s, 1),
TP counted over that defect's own mask; the curve is the mean over all defects.
For both, FPR(t) = fraction of the good pixels (outside every defect mask, in any image, good or
defective) scoring >= t, as in both official evaluation scripts.
"""
import math

import numpy as np
from scipy import ndimage

from adkit.evaluate.metrics import DEFAULT_FPR_LIMIT, area_up_to

# The FPR limits the official MVTec LOCO AD evaluation script reports AU-sPRO at.
LOCO_FPR_LIMITS = (0.01, 0.05, 0.1, 0.3, 1.0)

_8_CONNECTIVITY = np.ones((3, 3), dtype=bool)


def saturation_area(defect_area, saturation_threshold, relative) -> int:
    """Saturation area of one defect by the official MVTec LOCO AD rule.

    relative: int(saturation_threshold * defect_area); absolute (a pixel count):
    min(saturation_threshold, defect_area). Always at least 1: a defect of a few pixels with a
    relative threshold would otherwise get 0, and the official code would divide by zero."""
    if relative:
        area = int(saturation_threshold * defect_area)
    else:
        area = int(min(saturation_threshold, defect_area))
    return max(area, 1)


class PixelMetricAccumulator:
    """Streaming pixel AUROC, AU-PRO and AU-sPRO over images of any sizes.

    ``lo``, ``hi``: the range of all map values (values outside are clipped into it; with
    lo == hi every value falls in the first bin). ``bins``: number of equal score bins
    (thresholds at their edges)."""

    def __init__(self, lo, hi, bins=2 ** 20):
        lo, hi = float(lo), float(hi)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise ValueError(f"need finite lo <= hi, got lo={lo}, hi={hi}")
        if int(bins) != bins or bins < 1:
            raise ValueError(f"bins must be a positive integer, got {bins}")
        self.lo, self.hi, self.bins = lo, hi, int(bins)
        # Counts stay integers (exact, no float rounding in FPR / AUROC); weights are float64.
        self.good_hist = np.zeros(self.bins, dtype=np.int64)      # pixels outside defect_mask
        self.defect_hist = np.zeros(self.bins, dtype=np.int64)    # pixels inside defect_mask
        self.pro_weight = np.zeros(self.bins, dtype=np.float64)   # sum of 1/|region| per bin
        self.spro_weight = np.zeros(self.bins, dtype=np.float64)  # sum of 1/s on top-s pixels
        self.n_regions = 0
        self.n_defects = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the histograms (independent of the number of images added)."""
        return sum(a.nbytes for a in self._arrays())

    def add(self, amap, defect_mask, defects=None):
        """Accumulate one image.

        amap: HxW float scores (any size). defect_mask: HxW bool, the union of all defects (all
        False for a good image). defects: None (no sPRO for this image) or a list of
        (HxW bool mask, saturation area s >= 1), one per annotated defect ([] for a good image);
        each mask must lie inside defect_mask, or its pixels would count as good ones."""
        amap = np.asarray(amap)
        if amap.ndim != 2:
            raise ValueError(f"amap must be HxW, got shape {amap.shape}")
        if not np.isfinite(amap).all():
            raise ValueError("amap contains NaN or infinite values")
        defect_mask = _binary_mask(defect_mask, amap.shape, "defect_mask")
        masks_and_areas = self._check_defects(defects, defect_mask)

        index = self._bin_index(amap)
        defect_index = index[defect_mask]
        defect_counts = np.bincount(defect_index, minlength=self.bins)
        self.defect_hist += defect_counts
        # good = all - defect: a bincount over the whole image instead of a second
        # boolean-indexed copy of its good pixels.
        self.good_hist += np.bincount(index.ravel(), minlength=self.bins) - defect_counts

        if defect_index.size:
            # Regions per image: two images never share a region.
            labels, n_regions = ndimage.label(defect_mask, structure=_8_CONNECTIVITY)
            region_of_pixel = labels[defect_mask]
            region_sizes = np.bincount(region_of_pixel).astype(np.float64)  # index 0 unused
            per_pixel = 1.0 / region_sizes[region_of_pixel]
            self.pro_weight += np.bincount(defect_index, weights=per_pixel, minlength=self.bins)
            self.n_regions += int(n_regions)

        if masks_and_areas is not None:
            top_bins, top_weights = [], []
            for mask, area in masks_and_areas:
                own = index[mask]
                if own.size > area:
                    # Only the bins of the top-s pixels matter: pixels tied with the s-th one
                    # share its bin, so which of them carries the weight makes no difference.
                    own = np.partition(own, own.size - area)[own.size - area:]
                top_bins.append(own)
                top_weights.append(np.full(own.size, 1.0 / area))
            if top_bins:
                self.spro_weight += np.bincount(np.concatenate(top_bins),
                                                weights=np.concatenate(top_weights), minlength=self.bins)
            self.n_defects += len(masks_and_areas)
        return self

    def merge(self, other):
        """Add ``other`` (same lo, hi, bins) into this accumulator, in place; returns self."""
        mine, theirs = (self.lo, self.hi, self.bins), (other.lo, other.hi, other.bins)
        if mine != theirs:
            raise ValueError(f"cannot merge accumulators with (lo, hi, bins) = {mine} and {theirs}")
        for array, other_array in zip(self._arrays(), other._arrays()):
            array += other_array
        self.n_regions += other.n_regions
        self.n_defects += other.n_defects
        return self

    def pixel_auroc(self) -> float:
        """ROC AUC over all pixels; pairs in the same bin count half; nan without good or
        without defect pixels."""
        n_good, n_defect = int(self.good_hist.sum()), int(self.defect_hist.sum())
        if n_good == 0 or n_defect == 0:
            return math.nan
        good = self.good_hist.astype(np.float64)
        good_below = np.cumsum(good) - good
        pairs = np.dot(self.defect_hist.astype(np.float64), good_below + 0.5 * good)
        return float(pairs / (float(n_good) * n_defect))

    def pro_curve(self):
        """(fpr, pro) at the bin edges from (0, 0) to (1, 1); None without regions or without
        good pixels."""
        if self.n_regions == 0:
            return None
        curve = self._curve(self.pro_weight, self.defect_hist > 0, self.n_regions)
        if curve is not None:
            curve[1][-1] = 1.0  # every region is fully covered there; drop the summation rounding
        return curve

    def aupro(self, fpr_limit=DEFAULT_FPR_LIMIT) -> float:
        """Area under ``pro_curve`` up to ``fpr_limit`` (end point interpolated linearly) divided
        by ``fpr_limit``; nan without regions or without good pixels."""
        return _normalised_area(self.pro_curve(), fpr_limit)

    def spro_curve(self):
        """(fpr, spro) at the bin edges from (0, 0); ends at FPR 1 with spro 1 (unless a
        saturation area exceeds its defect's area). None without defects or good pixels."""
        if self.n_defects == 0:
            return None
        return self._curve(self.spro_weight, self.spro_weight > 0, self.n_defects)

    def au_spro(self, fpr_limit) -> float:
        """Area under ``spro_curve`` up to ``fpr_limit`` divided by ``fpr_limit``; nan when no
        defect was given (or there are no good pixels)."""
        return _normalised_area(self.spro_curve(), fpr_limit)

    # ------------------------------------------------------------------------- internals

    def _arrays(self):
        return self.good_hist, self.defect_hist, self.pro_weight, self.spro_weight

    def _bin_index(self, amap):
        if self.hi == self.lo:
            return np.zeros(amap.shape, dtype=np.intp)
        # float64: a float32 product would misplace values near bin edges at 2**20 bins.
        scaled = (amap.astype(np.float64) - self.lo) / (self.hi - self.lo) * self.bins
        np.floor(scaled, out=scaled)
        np.clip(scaled, 0, self.bins - 1, out=scaled)  # clips out-of-range values; hi -> top bin
        return scaled.astype(np.intp)

    def _curve(self, weight, moves, count):
        """Cumulative (fpr, weight / count) from the top bin down, after (0, 0); bins where
        neither coordinate moves are dropped (they only repeat the previous point)."""
        n_good = int(self.good_hist.sum())
        if n_good == 0:
            return None
        keep = (moves | (self.good_hist > 0))[::-1]
        fpr = np.cumsum(self.good_hist[::-1])[keep] / n_good
        y = np.cumsum(weight[::-1])[keep] / count
        return np.concatenate(([0.0], fpr)), np.concatenate(([0.0], y))

    @staticmethod
    def _check_defects(defects, defect_mask):
        if defects is None:
            return None
        checked = []
        for mask, area in defects:
            mask = _binary_mask(mask, defect_mask.shape, "a defect mask")
            if np.any(mask & ~defect_mask):
                raise ValueError("a defect mask has pixels outside defect_mask "
                                 "(the union of all defects)")
            if int(area) != area or area < 1:
                raise ValueError(f"saturation area must be an integer >= 1, got {area}")
            checked.append((mask, int(area)))
        return checked


def _normalised_area(curve, fpr_limit) -> float:
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    return math.nan if curve is None else area_up_to(*curve, fpr_limit) / fpr_limit


def _binary_mask(mask, shape, name):
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise ValueError(f"{name} has shape {mask.shape}, expected {shape}")
    if mask.dtype != bool:
        if np.any((mask != 0) & (mask != 1)):
            raise ValueError(f"{name} must hold only 0 and 1 (or be bool)")
        mask = mask != 0
    return mask
