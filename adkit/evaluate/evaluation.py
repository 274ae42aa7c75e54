"""Running a model over a set of images and scoring it; used by main.py, the calibration and tests."""
import os
import shutil
import tempfile
import weakref

import numpy as np

from adkit.evaluate import metrics
from adkit.core.progress import progress


def batches(dataset, batch_size, desc):
    """float32 [B,3,H,W] batches of ``dataset`` (``len`` and ``[i]`` -> [3,H,W]), in order,
    with progress counted in images (or tiles: a dataset's ``unit``)."""
    bar = progress(total=len(dataset), desc=desc, unit=getattr(dataset, "unit", "images"))
    for start in range(0, len(dataset), batch_size):
        stop = min(start + batch_size, len(dataset))
        yield np.stack([dataset[i] for i in range(start, stop)])
        bar.update(stop - start)
    bar.close()


def run_inference(run_batch, dataset, batch_size, desc="inference", tiling=None):
    """(maps float32 [N,H,W], scores float32 [N]) over ``dataset``; ``run_batch`` is an
    engine's ``run`` (batch -> maps [B,1,H,W], scores).

    ``tiling`` (adkit.core.tiling.Tiling): ``dataset`` holds photos at their own size, each
    scored through its tiles; the maps are then a PhotoMaps of photo-size maps and each score
    is its map's max.

    Several processes (adkit.core.distributed): each runs ``run_batch`` on its contiguous block of
    ``dataset`` and the results are gathered once to the main process, which gets the whole
    (maps, scores) in dataset order; the others get None. Every process must call this with
    the same dataset."""
    from adkit.core import distributed

    if tiling is not None:  # one process (adkit.pipelines.categories.one_process_for_tiles)
        return run_tiled(run_batch, dataset, tiling, batch_size, desc)
    if distributed.world_size() == 1:
        return _run_batches(run_batch, dataset, batch_size, desc)
    mine = _Subset(dataset, distributed.shard(range(len(dataset))))
    return distributed.gather(_run_batches(run_batch, mine, batch_size, desc))


def _run_batches(run_batch, dataset, batch_size, desc):
    maps, scores = [], []
    for batch in batches(dataset, batch_size, desc):
        amap, score = run_batch(batch)
        maps.append(np.asarray(amap)[:, 0])
        scores.append(np.asarray(score).reshape(-1))
    if not maps:
        return np.zeros((0, 0, 0), np.float32), np.zeros(0, np.float32)
    return np.concatenate(maps), np.concatenate(scores)


def run_tiled(run_batch, photos, tiling, batch_size, desc):
    """(PhotoMaps, scores [N]) of ``photos`` (``len``, ``load_uint8(i)`` -> uint8 photo,
    ``photo_hw(i)``) scored through their tiles, one photo at a time; progress counts tiles."""
    from adkit.core.tiling import score_photo

    maps, scores = PhotoMaps(), np.zeros(len(photos), np.float32)
    bar = progress(total=sum(tiling.count(*photos.photo_hw(i)) for i in range(len(photos))),
                   desc=desc, unit="tiles")
    for i in range(len(photos)):
        amap, scores[i] = score_photo(run_batch, tiling, photos.load_uint8(i), batch_size, bar.update)
        maps.append(amap)
    bar.close()
    return maps, scores


class PhotoMaps:
    """Anomaly maps of photos at their own sizes, one .npy file each in a temporary folder that
    goes with this object: the maps of a test set of camera photos need not fit in memory.
    ``len``, ``[i]`` (read back memory-mapped), ``min()`` and ``max()``, as the [N,H,W] array
    of model-size maps they stand in for."""

    def __init__(self):
        self.folder = tempfile.mkdtemp(prefix="adkit_maps_")
        weakref.finalize(self, shutil.rmtree, self.folder, True)
        self._count, self._lo, self._hi = 0, np.inf, -np.inf

    def append(self, amap):
        np.save(os.path.join(self.folder, f"{self._count}.npy"), np.asarray(amap, np.float32))
        self._lo, self._hi = min(self._lo, float(amap.min())), max(self._hi, float(amap.max()))
        self._count += 1

    def __len__(self):
        return self._count

    def __getitem__(self, i):
        if not -self._count <= i < self._count:
            raise IndexError(i)
        return np.load(os.path.join(self.folder, f"{i % self._count}.npy"), mmap_mode="r")

    def min(self):
        return self._lo

    def max(self):
        return self._hi


MAX_SAMPLED_VALUES = 1 << 22  # map values kept for quantiles of photo-size maps (16 MB)


def map_values(maps):
    """The values of ``maps`` (an [N,H,W] array or a PhotoMaps) for quantiles: all of an array;
    of photo maps an evenly strided sample of at most MAX_SAMPLED_VALUES in all."""
    if not isinstance(maps, PhotoMaps):
        return np.asarray(maps)
    if not len(maps):
        return np.zeros(0, np.float32)
    per_map = max(1, MAX_SAMPLED_VALUES // len(maps))
    values = []
    for i in range(len(maps)):
        flat = maps[i].reshape(-1)
        values.append(np.asarray(flat[::max(1, flat.size // per_map)]))
    return np.concatenate(values)


class _Subset:
    """``dataset[indices[i]]`` as item i (``len`` and ``[i]``, what ``batches`` reads)."""

    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.dataset[self.indices[i]]


EVAL_RESOLUTIONS = ("model", "original")
EVAL_RESOLUTION_HELP = ("model: maps and masks at the model's input size; original: maps upsampled "
                        "(bilinear) to each image's own size and scored against its full-size mask, "
                        "image score = max of that map, as the official MVTec evaluation scripts do")


def evaluate_dataset(run_batch, test_set, batch_size, resolution="model", subsets=None, tiling=None):
    """(metrics dict of adkit.evaluate.metrics.evaluate, per-image model scores, model-size maps, PRO
    curve). ``resolution``: EVAL_RESOLUTIONS. ``subsets`` {name: defect types}: also scored
    apart, each with all good images (MVTec LOCO: logical, structural). When the test set knows
    saturation thresholds (``test_set.defect_kinds``), AU-sPRO is reported at the official
    LOCO FPR limits, for the whole set and each subset. ``tiling``: the test photos are at
    their own size and scored through their tiles (run_inference); maps and metrics are then at
    the original resolution whatever ``resolution`` says."""
    if resolution not in EVAL_RESOLUTIONS:
        raise ValueError(f"resolution must be one of {EVAL_RESOLUTIONS}, got {resolution!r}")
    if tiling is not None:
        resolution = "original"
    maps, scores = run_inference(run_batch, test_set, batch_size, desc="scoring test images", tiling=tiling)
    labels = np.array([item.label for item in test_set.items])
    types = [item.defect_type for item in test_set.items]
    groups = {"all": None, **(subsets or {})}
    with_spro = test_set.defect_kinds is not None
    streamed, image_scores = None, scores
    if resolution == "original" or with_spro or subsets:
        streamed, full_scores = stream_pixel_metrics(test_set, maps, groups, resolution == "original")
        if resolution == "original":
            image_scores = full_scores
    if resolution == "model":
        masks, has_mask = zip(*(test_set.mask(i) for i in range(len(test_set))))
        result, curve = metrics.evaluate(labels, scores, types, masks=np.stack(masks), maps=maps,
                                         mask_available=np.array(has_mask), with_pro_curve=True)
    else:
        result = metrics.evaluate(labels, image_scores, types)
        # F1-max and its threshold stay on the model's scores: the ones a deployment thresholds
        result["f1_max"], result["f1_threshold"] = map(metrics.json_number, metrics.f1_max(labels, scores))
        result.update(pixel_auroc=metrics.json_number(streamed["all"].pixel_auroc()),
                      aupro=metrics.json_number(streamed["all"].aupro()))
        curve = streamed["all"].pro_curve() if result["aupro"] is not None else None
    result["eval_resolution"] = resolution
    result["image_score"] = ("max of the map at the image's size" if resolution == "original"
                             else "the model's score")
    if with_spro:
        result["au_spro"] = _au_spro(streamed["all"])
    if subsets:
        result["subsets"] = {name: {"image_auroc": metrics.json_number(metrics.image_auroc(*_members(
                                        labels, image_scores, types, kinds))),
                                    "pixel_auroc": metrics.json_number(streamed[name].pixel_auroc()),
                                    "aupro": metrics.json_number(streamed[name].aupro()),
                                    **({"au_spro": _au_spro(streamed[name])} if with_spro else {})}
                             for name, kinds in subsets.items()}
    return result, scores, maps, curve


def stream_pixel_metrics(test_set, maps, groups, full_size):
    """One image at a time (memory does not grow with the images' size or number): the map at
    the image's own size (``full_size``) or the model's, with its mask and defects, goes into
    the accumulator of every group it belongs to (good images: all; defects: those whose types
    the group lists, None = every type). Returns ({group: PixelMetricAccumulator}, the max of
    each image's map)."""
    from adkit.core.image_io import map_at_size
    from adkit.evaluate.pixel_metrics import PixelMetricAccumulator

    lo, hi = (float(maps.min()), float(maps.max())) if len(maps) else (0.0, 0.0)
    accumulators = {name: PixelMetricAccumulator(lo, hi) for name in groups}
    map_max = np.zeros(len(test_set), np.float32)
    for i in progress(range(len(test_set)), total=len(test_set), desc="computing pixel metrics", unit="images"):
        item = test_set.items[i]
        if full_size:
            amap = map_at_size(maps[i], test_set.photo_hw(i))
        else:
            amap = maps[i]
        map_max[i] = amap.max()
        if item.label == 1 and item.mask_path is None:
            continue  # a defect type shipped without masks counts for image metrics only
        defects = test_set.defects(i, at_model_size=not full_size)
        if defects is None:
            mask = test_set.full_mask(i) > 0 if full_size else test_set.mask(i)[0] > 0
        else:  # the union of the defects: their mask files are read once
            mask = np.zeros(amap.shape, bool)
            for defect, _ in defects:
                mask |= defect
        for name, kinds in groups.items():
            if item.label == 0 or kinds is None or item.defect_type in kinds:
                accumulators[name].add(amap, mask, defects)
    return accumulators, map_max


def _au_spro(accumulator):
    from adkit.evaluate.pixel_metrics import LOCO_FPR_LIMITS

    return {str(limit): metrics.json_number(accumulator.au_spro(limit)) for limit in LOCO_FPR_LIMITS}


def _members(labels, scores, types, kinds):
    keep = np.array([label == 0 or kind in kinds for label, kind in zip(labels, types)], bool)
    return labels[keep], np.asarray(scores)[keep]


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
