"""Scores from the training side, recorded once after training in ``calibration.json``.

The threshold policies, the overlay colour scale and df_training.csv all come from them: the
model's scores on its training and validation good images, and on synthetic defects made from
the validation images. Nothing here looks at the test set.
"""
import math
import os

import numpy as np

from adkit.evaluate import thresholds
from adkit.core.errors import UserError
from adkit.evaluate.evaluation import map_values, run_inference
from adkit.core.io_utils import read_json, write_json

CALIBRATION_FILE = "calibration.json"
EVAL_METRICS_FILE = "eval_metrics.json"
DEPLOY_CONFIG = "deploy_config.json"  # beside an export (adkit.deploy.exported): its stored threshold
SYNTHETIC_TARGET = 24  # synthetic defects to aim for: enough positives for an F1 threshold
MAX_PER_IMAGE = 4


def calibrate(run_batch, train_set, val_set, batch_size, seed, policy_text, tiling=None):
    """Score the training side with ``run_batch`` and return the calibration dict (see module).
    Several processes (adkit.core.distributed): every one must call this; each scores its share of
    the images, and the main process gets the dict, the others None.

    ``tiling`` (adkit.core.tiling.Tiling): the sets hold photos at their own size, scored
    through their tiles, and each synthetic defect is drawn at the photo's pixel size inside a
    tile-sized window. The training photos are then scored only when there are no validation
    photos: their tiles were fitted (their scores say little), and scoring every tile of them
    again would double the time calibration takes."""
    from adkit.core import distributed
    from adkit.evaluate.synthetic import DEFAULT_KINDS

    score_train = tiling is None or not len(val_set)
    train_out = (run_inference(run_batch, train_set, batch_size, "scoring training images", tiling)
                 if score_train else (None, np.zeros(0)))
    val_out = run_inference(run_batch, val_set, batch_size, "scoring validation images", tiling)
    per_image, synthetic_out = 0, None
    if len(val_set):
        per_kind = SYNTHETIC_TARGET / (len(val_set) * len(DEFAULT_KINDS))
        per_image = min(MAX_PER_IMAGE, max(1, math.ceil(per_kind)))
        synthetic_out = _score_synthetic(run_batch, val_set, batch_size, seed, per_image, tiling)
    if not distributed.is_main():
        return None
    (train_maps, train_scores), (val_maps, val_scores) = train_out, val_out
    synthetic_entries, synthetic_scores = [], np.zeros(0)
    if synthetic_out is not None:
        kinds, synthetic_scores = synthetic_out
        sources = [p for p in val_set.paths for _ in range(len(DEFAULT_KINDS) * per_image)]
        synthetic_entries = [{"path": path, "kind": kind, "score": float(score)}
                             for path, kind, score in zip(sources, kinds, synthetic_scores)]
    good_values = map_values(val_maps if len(val_set) else train_maps)
    policy = thresholds.parse_policy(policy_text)
    threshold = thresholds.compute_threshold(policy, val_scores, synthetic_scores)
    return {
        "policy": str(policy),
        "threshold": threshold.as_dict(),
        "candidates": thresholds.candidate_thresholds(val_scores, synthetic_scores),
        "map_range": [float(np.median(good_values)), float(np.quantile(good_values, 0.999))],
        "seed": int(seed),
        "synthetic_per_image": per_image,
        # a tiled model's training photos unscored (None) when validation photos were scored
        "train": ([{"path": p, "score": float(s)} for p, s in zip(train_set.paths, train_scores)]
                  if score_train else [{"path": p, "score": None} for p in train_set.paths]),
        "val": [{"path": p, "score": float(s)} for p, s in zip(val_set.paths, val_scores)],
        "synthetic": synthetic_entries,
    }


def _score_synthetic(run_batch, val_set, batch_size, seed, per_image, tiling):
    """(kinds, scores) of ``per_image`` synthetic defects of each DEFAULT_KIND on every
    validation image, in the order of synthetic_defects. Whole images: the defects of all of
    them scored in batches. Tiled: one photo at a time (a set of camera photos and their
    defective copies need not fit in memory), each defect drawn in a tile-sized window."""
    from adkit.core.image_io import to_chw_float
    from adkit.core.progress import progress
    from adkit.core.tiling import score_photo
    from adkit.evaluate.synthetic import DEFAULT_KINDS, synthetic_defects

    if tiling is None:
        images = [val_set.load_uint8(i) for i in range(len(val_set))]
        made = synthetic_defects(images, seed, DEFAULT_KINDS, per_image)
        out = run_inference(run_batch, [to_chw_float(im) for im, _, _ in made], batch_size,
                            "scoring synthetic defects")  # None on all but the main process
        return [kind for _, _, kind in made], None if out is None else out[1]
    per_photo = len(DEFAULT_KINDS) * per_image
    bar = progress(total=per_photo * sum(tiling.count(*val_set.photo_hw(i)) for i in range(len(val_set))),
                   desc="scoring synthetic defects", unit="tiles")
    kinds, scores = [], []
    for kind, defective in synthetic_photos(val_set, seed, per_image, tiling.tile):
        kinds.append(kind)
        scores.append(score_photo(run_batch, tiling, defective, batch_size, bar.update)[1])
    bar.close()
    return kinds, np.array(scores, np.float32)


def synthetic_photos(val_set, seed, per_image, window):
    """(kind, defective photo) of the synthetic defects of a tiled model's calibration, one at a
    time and in synthetic_defects' order and seeds: each drawn at the photo's own pixel size in
    a ``window`` (the tile) of a validation photo (``len``, ``load_uint8(i)``)."""
    from adkit.evaluate.synthetic import DEFAULT_KINDS, make_defect_in_window

    for i in range(len(val_set)):
        photo = val_set.load_uint8(i)
        for k, kind in enumerate(DEFAULT_KINDS):
            for r in range(per_image):
                yield kind, make_defect_in_window(photo, kind, np.random.default_rng([seed, i, k, r]), window)[0]


def check_policy_applies(policy_text, n_val):
    """Before training: a policy that needs validation images must have some."""
    policy = thresholds.parse_policy(policy_text)
    if policy.kind in ("val_max", "val_fpr", "synthetic_f1") and n_val == 0:
        raise UserError(f"--threshold_policy {policy}: needs validation good images, but none are "
                        "held out: use --val_ratio > 0 with at least 2 images in train/good, or "
                        "--threshold_policy manual:VALUE")
    return policy


FEW_VALIDATION_IMAGES = 2  # at or below this many, a threshold from validation images is a guess


def few_validation_warning(calibration, policy):
    """A warning (str) when a threshold of ``policy`` rests on at most FEW_VALIDATION_IMAGES
    validation good images, else None. Train and eval log it and the report shows it: with one
    validation image, every good test part may be flagged."""
    policy = str(policy or "")
    n_val = len((calibration or {}).get("val") or [])
    if not policy.startswith(("val_max", "val_fpr", "synthetic_f1")) or n_val > FEW_VALIDATION_IMAGES:
        return None
    return (f"the threshold ({policy}) rests on {n_val} validation good image{'s' if n_val != 1 else ''}: "
            "it may flag good parts or pass defects; hold out more good images (a larger "
            "--val_ratio, or more train/good images) and check the score histogram before deploying")


def write_calibration(folder, calibration):
    write_json(os.path.join(folder, CALIBRATION_FILE), calibration)


def read_calibration(folder):
    path = os.path.join(folder, CALIBRATION_FILE)
    return read_json(path) if os.path.isfile(path) else None


def scores_of(calibration, split):
    return np.array([entry["score"] for entry in calibration.get(split, [])], dtype=np.float64)


def resolve_threshold(folder, policy_text=None, manual=None, test_f1_threshold=None):
    """The Threshold to use with the model in ``folder`` (a checkpoint or an export):
    ``--threshold`` (manual) wins, then ``--threshold_policy`` recomputed from the folder's
    calibration, then the policy stored at training (or the export's stored threshold)."""
    if manual is not None:
        return thresholds.Threshold(float(manual), f"manual:{float(manual):g}",
                                    "given by the user (--threshold)")
    calibration = read_calibration(folder)
    deploy_path = os.path.join(folder, DEPLOY_CONFIG)
    if policy_text is None:
        if os.path.isfile(deploy_path):
            stored = read_json(deploy_path)
            return thresholds.Threshold(stored.get("threshold"), stored.get("threshold_policy", "unknown"),
                                        stored.get("threshold_source", "stored at export"))
        if calibration is None:
            return thresholds.Threshold(None, "none", f"{folder} has no {CALIBRATION_FILE} "
                                                      "(run main.py --mode eval once to make it)")
        policy_text = calibration["policy"]
    policy = thresholds.parse_policy(policy_text)
    if policy.kind == "test_f1" and test_f1_threshold is None:
        eval_path = os.path.join(folder, EVAL_METRICS_FILE)
        if os.path.isfile(eval_path):
            test_f1_threshold = read_json(eval_path).get("f1_threshold")
    if calibration is None and policy.kind not in ("manual", "test_f1"):
        raise UserError(f"--threshold_policy {policy}: {folder} has no {CALIBRATION_FILE} "
                        "(training writes it; for an older checkpoint run main.py --mode eval once)")
    calibration = calibration or {}
    return thresholds.compute_threshold(policy, scores_of(calibration, "val"),
                                        scores_of(calibration, "synthetic"), test_f1_threshold)
