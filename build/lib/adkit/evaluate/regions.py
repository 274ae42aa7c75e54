"""Defect regions: the connected parts of the binary mask (map >= threshold), each with its
bounding box, size and how strongly it scored. What a line operator or an MES acts on: where
the defect is and how large, not only that the part failed."""
import cv2
import numpy as np
from scipy import ndimage

REGION_FIELDS = ("x", "y", "width", "height", "area", "max", "mean")


def defect_regions(amap, threshold):
    """[{x, y, width, height, area, max, mean}] of the 8-connected components of
    ``amap >= threshold`` (the outline the overlays draw), the highest-scoring first; box and
    area in pixels of ``amap``. Empty without a threshold."""
    if threshold is None:
        return []
    amap = np.asarray(amap, dtype=np.float32)
    if float(amap.max()) < threshold:  # most good parts: no pixel to label
        return []
    mask = (amap >= threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return []
    index = np.arange(1, count)
    peaks = ndimage.maximum(amap, labels, index)
    sums = np.bincount(labels.ravel(), weights=amap.ravel().astype(np.float64), minlength=count)[1:]
    regions = []
    for k, peak, total in zip(index, peaks, sums):
        x, y, w, h, area = (int(v) for v in stats[k])
        regions.append({"x": x, "y": y, "width": w, "height": h, "area": area,
                        "max": float(peak), "mean": float(total / area)})
    regions.sort(key=lambda r: (-r["max"], r["y"], r["x"]))
    return regions
