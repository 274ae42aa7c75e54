"""main.py --mode update: a new version of a model from its inspectors' reviews.

The reviewed false alarms are good parts the model did not know: a fitted method learns them
without a refit (PatchCore adds their patches' coreset to its memory bank, PaDiM updates its
Gaussians; models/fitted_method.py), and every method re-calibrates its threshold with them
added to the validation images (the same policy and calibration as training). Reviewed defects
are never learnt from: they are what the update must keep finding.

Before anything is written, a k-fold cross-validation over the reviews (learn from the other
folds' good images, judge the held-out fold) prints the decision table on reviewed images the
model did not learn from, before and after; then the model learnt from all of them must confirm
at least as many reviewed defects as the old one, or nothing is written.
"""
import os
import shutil

import numpy as np

from adkit.core.errors import UserError
from adkit.core.io_utils import staged_folder, write_json
from adkit.core.progress import log

FOLDS = 5
RUNTIME = {"device": "cpu", "eval_batch_size": 8}  # load_trained's options of the run, not the model
_LEARNT = ("fitted.npz", "checkpoint.pdparams", "calibration.json")  # what an update writes anew


def update(model_dir, reviews_path, output_dir, review_model=None, folds=FOLDS, echo=print):
    """``echo``s the decision table (before any refusal), then what was written."""
    from adkit.deploy.serving.repository import VERSION_FILE, version_number
    from adkit.evaluate.calibration import read_calibration
    from adkit.options.registry import TRAIN_CONFIG_FILE

    if not os.path.isfile(os.path.join(model_dir, TRAIN_CONFIG_FILE)):
        raise UserError(f"--model_dir {model_dir}: not a checkpoint folder (no {TRAIN_CONFIG_FILE}); update "
                        "the training folder, then export it")
    if os.path.lexists(output_dir):
        raise UserError(f"--output_dir {output_dir}: already exists; choose a new folder")
    calibration = read_calibration(model_dir)
    if calibration is None:
        raise UserError(f"--model_dir {model_dir}: no calibration.json (run main.py --mode eval once)")
    reviews = reviewed_images(reviews_path, model_dir, review_model)
    goods = [r for r in reviews if r["truth"] == "good"]
    defects = [r for r in reviews if r["truth"] == "defect"]
    log.info("update: %d reviews with images (%d good parts, %d defects) of %s", len(reviews), len(goods),
             len(defects), model_dir)
    if not goods:
        raise UserError(f"--reviews {reviews_path}: no reviewed good part (false_alarm) with a kept image: "
                        "nothing to learn")

    old = Learner(model_dir, calibration)
    before = old.scores([r["image"] for r in reviews]) >= old.threshold
    after = np.zeros(len(reviews), bool)
    order = np.random.default_rng(0).permutation(len(reviews))
    k = min(folds, len(reviews))
    for fold in range(k):
        held = order[fold::k]
        others = set(order.tolist()) - set(held.tolist())
        learnt = [reviews[i]["image"] for i in sorted(others) if reviews[i]["truth"] == "good"]
        log.info("update: fold %d/%d: learning %d good images, judging %d", fold + 1, k, len(learnt), len(held))
        learner = Learner(model_dir, calibration).learn(learnt)
        after[held] = learner.scores([reviews[i]["image"] for i in held]) >= learner.threshold
    echo(decision_table(reviews, before, after, k))

    final = Learner(model_dir, calibration).learn([r["image"] for r in goods])
    confirmed_old = int(np.sum(old.scores([r["image"] for r in defects]) >= old.threshold)) if defects else 0
    confirmed_new = int(np.sum(final.scores([r["image"] for r in defects]) >= final.threshold)) if defects else 0
    echo(f"threshold {old.threshold:.6g} -> {final.threshold:.6g} ({final.policy}); reviewed defects confirmed "
         f"{confirmed_old} -> {confirmed_new} of {len(defects)}")
    if confirmed_new < confirmed_old:
        raise UserError(f"update refused: the updated model confirms {confirmed_new} of the {len(defects)} "
                        f"reviewed defects, the old one {confirmed_old}; nothing written")
    version = version_number(model_dir) + 1
    with staged_folder(output_dir) as staging:
        for name in os.listdir(model_dir):
            path = os.path.join(model_dir, name)
            if os.path.isfile(path) and name not in _LEARNT + (VERSION_FILE,):
                shutil.copy2(path, os.path.join(staging, name))
        final.save(staging)
        write_json(os.path.join(staging, VERSION_FILE), {
            "version": version, "updated_from": os.path.abspath(model_dir),
            "learnt_good_images": final.learnt,
            "validation_good_images": [r["image"] for r in goods if r["image"] not in final.learnt],
            "reviewed_defects_confirmed": {"before": confirmed_old, "after": confirmed_new}})
    echo(f"wrote version {version} to {output_dir}")


def reviewed_images(reviews_path, model_dir, review_model):
    """The last review of each request of the model, with an existing image: dicts with
    "image" (a path), "truth" (good / defect) and "verdict"."""
    from adkit.deploy.serving.reviews import VERDICTS, read_reviews

    rows = read_reviews(reviews_path)
    names = sorted({row["model_name"] for row in rows})
    if review_model is None and len(names) > 1:
        raise UserError(f"--reviews {reviews_path}: reviews of several models ({', '.join(names)}); "
                        "name one with --review_model")
    chosen = review_model or (names[0] if names else None)
    latest = {}
    for row in rows:
        if row["model_name"] == chosen and row["verdict"] in VERDICTS:
            latest[row["request_id"]] = row  # a later review of the same answer corrects it
    found, missing = [], 0
    here = os.path.dirname(os.path.abspath(reviews_path))
    for row in latest.values():
        image = row.get("image") or ""
        image = image if not image or os.path.isabs(image) else os.path.join(here, image)
        if not image or not os.path.isfile(image):
            missing += 1
            continue
        found.append({"image": image, "verdict": row["verdict"], "truth": VERDICTS[row["verdict"]][1]})
    if missing:
        log.warning("update: %d reviews without their image skipped (serve.py --keep_images keeps them; "
                    "--keep_images_mb may have removed the oldest)", missing)
    if not found:
        raise UserError(f"--reviews {reviews_path}: no review of {chosen or 'any model'} with its image")
    return found


class Learner:
    """A checkpoint loaded to learn reviewed good images and re-calibrate its threshold."""

    def __init__(self, model_dir, calibration):
        from adkit.deploy.engines import scoring_engine
        from adkit.core.tiling import Tiling
        from adkit.evaluate.calibration import resolve_threshold
        from adkit.options.registry import load_trained

        self.model_dir, self.calibration = model_dir, calibration
        self.cfg, self.method = load_trained(model_dir, runtime_cfg=RUNTIME)
        self.tiling = Tiling.from_config(self.cfg)
        self.engine = scoring_engine(self.method, self.cfg)
        self.threshold = resolve_threshold(model_dir).value
        self.policy = calibration["policy"]
        self.arrays = None
        self.learnt = []
        if self.threshold is None:
            raise UserError(f"--model_dir {model_dir}: no threshold to judge reviews with")

    def _dataset(self, paths):
        from adkit.datasets import ImageDataset

        return ImageDataset(paths, None if self.tiling else self.cfg["image_size"])

    def learn(self, good_paths):
        """Learn ``good_paths`` (a fitted method's statistics) and re-calibrate with them added to
        the validation images; returns self. As in training, the validation images are not
        learnt: a fitted method learns a --val_ratio split of them (seeded, as training
        splits), the rest is validation only (a learnt image would score low there and pull the
        threshold down)."""
        from adkit.datasets import split_train_val
        from adkit.deploy.engines import scoring_engine
        from adkit.evaluate.calibration import calibrate
        from adkit.pipelines.categories import fitting_sets

        validation = list(good_paths)
        if good_paths and hasattr(self.method, "learn_good_images"):
            learnt, validation = split_train_val(list(good_paths), float(self.cfg.get("val_ratio") or 0.1),
                                                 int(self.cfg["seed"]))
            self.learnt = learnt
            goods = self._dataset(learnt).preload()
            fit_goods = fitting_sets(self.cfg, "update", goods, self._dataset([]))[0]
            untiled_count = None if self.tiling else len(self.calibration["train"])
            self.arrays = self.method.learn_good_images(self.model_dir, fit_goods, untiled_count)
            self.engine = scoring_engine(self.method, self.cfg)
        train = [entry["path"] for entry in self.calibration["train"]]
        val = [entry["path"] for entry in self.calibration["val"]] + validation
        absent = [p for p in train + val if not os.path.isfile(p)]
        if absent:
            raise UserError(f"{absent[0]}: a training-side image of {self.model_dir} is missing (calibration "
                            "scores them again; run the update where training ran)")
        self.calibration = calibrate(self.engine.run, self._dataset(train).preload(), self._dataset(val).preload(),
                                     int(self.cfg["eval_batch_size"]), int(self.cfg["seed"]), self.policy,
                                     self.tiling)
        self.threshold = self.calibration["threshold"]["value"]
        return self

    def scores(self, paths):
        from adkit.evaluate.evaluation import run_inference

        if not paths:
            return np.zeros(0)
        _, scores = run_inference(self.engine.run, self._dataset(paths).preload(), int(self.cfg["eval_batch_size"]),
                                  "scoring reviewed images", self.tiling)
        return np.asarray(scores, np.float64)

    def save(self, folder):
        from adkit.evaluate.calibration import write_calibration
        from adkit.train.fitted import save_fitted

        if self.arrays is not None:
            save_fitted(folder, self.method.name, *self.arrays)
        else:  # a trained method: its weights as they were
            shutil.copy2(os.path.join(self.model_dir, "checkpoint.pdparams"), folder)
        write_calibration(folder, self.calibration)


def decision_table(reviews, before, after, k):
    """What the line would have done on each reviewed image it did not learn from."""
    lines = [f"reviewed images, each judged by a model that did not learn from it ({k}-fold cross-validation):",
             f"{'verdict':<18}{'count':>7}{'flagged before':>16}{'flagged after':>15}"]
    for verdict in ("false_alarm", "defect_confirmed", "missed_defect"):
        members = np.array([r["verdict"] == verdict for r in reviews])
        if members.any():
            lines.append(f"{verdict:<18}{int(members.sum()):>7}{int(before[members].sum()):>16}"
                         f"{int(after[members].sum()):>15}")
    good = np.array([r["truth"] == "good" for r in reviews])
    defect = ~good
    for name, flags in (("before", before), ("after", after)):
        false_alarms = int(flags[good].sum())
        recall = f"{flags[defect].mean():.3f}" if defect.any() else "-"
        lines.append(f"{name}: false alarms {false_alarms} of {int(good.sum())} good parts, "
                     f"defect recall {recall} of {int(defect.sum())}")
    return "\n".join(lines)
