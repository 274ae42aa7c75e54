"""Running a model over a dataset and scoring it; used by main.py eval and the tests."""
import numpy as np

from . import metrics
from .training import progress


def run_inference(net, dataset, batch_size, desc="inference"):
    """(maps float32 [N,H,W], scores float32 [N]) from a dygraph inference net."""
    import paddle

    maps, scores = [], []
    starts = range(0, len(dataset), batch_size)
    with paddle.no_grad():
        for start in progress(starts, total=len(starts), desc=desc):
            batch = np.stack([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            amap, score = net(paddle.to_tensor(batch))
            maps.append(amap.numpy()[:, 0])
            scores.append(score.numpy().reshape(-1))
    return np.concatenate(maps), np.concatenate(scores)


def evaluate_dataset(net, test_set, batch_size):
    """Metrics dict (adkit.metrics.evaluate) plus the per-image scores, for one category."""
    maps, scores = run_inference(net, test_set, batch_size, desc="eval")
    masks, has_mask = zip(*(test_set.mask(i) for i in range(len(test_set))))
    labels = np.array([item.label for item in test_set.items])
    types = [item.defect_type for item in test_set.items]
    result = metrics.evaluate(labels, scores, types, masks=np.stack(masks), maps=maps,
                              mask_available=np.array(has_mask))
    return result, scores


SUMMARY_KEYS = ("image_auroc", "pixel_auroc", "aupro", "f1_max")


def mean_over_categories(results):
    """Mean of each headline metric over the categories that have it (None if none do)."""
    mean = {}
    for key in SUMMARY_KEYS:
        values = [r[key] for r in results if r.get(key) is not None]
        mean[key] = float(np.mean(values)) if values else None
    return mean
