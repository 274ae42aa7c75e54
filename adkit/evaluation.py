"""Running a model over a set of images and scoring it; used by main.py, the calibration and tests."""
import numpy as np

from . import metrics
from .training import progress


def batches(dataset, batch_size, desc):
    """float32 [B,3,H,W] batches of ``dataset`` (``len`` and ``[i]`` -> [3,H,W]), in order,
    with progress."""
    starts = range(0, len(dataset), batch_size)
    for start in progress(starts, total=len(starts), desc=desc):
        yield np.stack([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])


def run_inference(run_batch, dataset, batch_size, desc="inference"):
    """(maps float32 [N,H,W], scores float32 [N]) over ``dataset``; ``run_batch`` is an
    engine's ``run`` (batch -> maps [B,1,H,W], scores)."""
    maps, scores = [], []
    for batch in batches(dataset, batch_size, desc):
        amap, score = run_batch(batch)
        maps.append(np.asarray(amap)[:, 0])
        scores.append(np.asarray(score).reshape(-1))
    if not maps:
        return np.zeros((0, 0, 0), np.float32), np.zeros(0, np.float32)
    return np.concatenate(maps), np.concatenate(scores)


def evaluate_dataset(run_batch, test_set, batch_size):
    """(metrics dict of adkit.metrics.evaluate, per-image scores, model-size maps, PRO curve)."""
    maps, scores = run_inference(run_batch, test_set, batch_size, desc="eval")
    masks, has_mask = zip(*(test_set.mask(i) for i in range(len(test_set))))
    labels = np.array([item.label for item in test_set.items])
    types = [item.defect_type for item in test_set.items]
    result, curve = metrics.evaluate(labels, scores, types, masks=np.stack(masks), maps=maps,
                                     mask_available=np.array(has_mask), with_pro_curve=True)
    return result, scores, maps, curve


SUMMARY_KEYS = ("image_auroc", "pixel_auroc", "aupro", "f1_max")
DECISION_KEYS = ("accuracy", "precision", "recall", "f1")


def mean_over_categories(results):
    """Mean of each headline metric over the categories that have it (None if none do); the
    decision metrics (at each category's own threshold) likewise."""
    mean = {}
    for key in SUMMARY_KEYS:
        values = [r[key] for r in results if r.get(key) is not None]
        mean[key] = float(np.mean(values)) if values else None
    for key in DECISION_KEYS:
        values = [r["decision"]["overall"][key] for r in results
                  if r.get("decision") and r["decision"]["overall"].get(key) is not None]
        mean[key] = float(np.mean(values)) if values else None
    return mean
