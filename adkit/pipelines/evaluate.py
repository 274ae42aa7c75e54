"""main.py --mode eval: metrics, decision tables, report.html and per-image outputs for a
category, and the summary tables printed for the run."""
import datetime
import os
import platform

import cv2
import numpy as np
import paddle

from adkit import __version__
from adkit.core import distributed
from adkit.core.image_io import size_text
from adkit.core.io_utils import write_json
from adkit.core.tiling import Tiling
from adkit.core.progress import log
from adkit.deploy.engines import scoring_engine
from adkit.evaluate import metrics
from adkit.evaluate.calibration import (calibrate, EVAL_METRICS_FILE, few_validation_warning,
                                        read_calibration, resolve_threshold, write_calibration)
from adkit.evaluate.evaluation import evaluate_dataset, mean_over_categories, run_inference
from adkit.evaluate.thresholds import DEFAULT_POLICY
from adkit.options.registry import load_trained as load_from_folder, spec_for
from adkit.outputs.eval_folder import MAPS_FOLDER, write_eval_folder, write_metrics_summaries
from adkit.pipelines.categories import checkpoint_dir, one_process_for_tiles, training_side
from adkit.pipelines.tables import format_decision, format_subsets, format_table
from adkit.train.trainer import CHECKPOINT_FILE
from adkit.datasets import open_category, raise_if_bad, TestDataset


def run_metadata(cfg, ckpt_dir):
    """What made an eval's numbers, for report.html: the model and its training options, the
    checkpoint, the date and the versions of the packages that computed them."""
    checkpoint = os.path.join(ckpt_dir, CHECKPOINT_FILE)
    written = (datetime.datetime.fromtimestamp(os.path.getmtime(checkpoint)).isoformat(timespec="seconds")
               if os.path.isfile(checkpoint) else "-")
    options = {"model": cfg["model"], "backbone": cfg.get("backbone") or "-",
               "training": schedule_text(cfg), "image size": size_text(cfg["image_size"]), "seed": cfg["seed"],
               "checkpoint": f"{os.path.abspath(ckpt_dir)} (written {written})",
               "evaluated": datetime.datetime.now().isoformat(timespec="seconds"),
               "versions": f"paddleAD {__version__}, Paddle {paddle.__version__}, numpy {np.__version__}, "
                           f"OpenCV {cv2.__version__}, Python {platform.python_version()}"}
    tiling = Tiling.from_config(cfg)
    if tiling is not None:
        options["tiles"] = (f"{size_text(tiling.tile)} px of the photo every {size_text(tiling.stride)} px, "
                            f"each resized to {size_text(tiling.model)}")
    return options


def schedule_text(cfg):
    """What training ran: "30 steps" (--steps wins over --epochs), "200 epochs", or that the
    method fits in one pass."""
    if not spec_for(cfg["model"]).trains:
        return "none: fitted in one pass"
    if cfg.get("steps"):
        return f"{cfg['steps']} steps"
    return f"{cfg['epochs']} epochs" if cfg.get("epochs") else "-"


def load_trained(cfg, cls):
    ckpt_dir = checkpoint_dir(cfg, cls)
    cfg, method = load_from_folder(ckpt_dir, runtime_cfg=cfg, expected_model=cfg["model"])
    return cfg, method, ckpt_dir


def evaluate(cfg, cls):
    """Metrics, decision tables, report.html and per-image outputs (<ckpt>/eval/) for one category."""
    category = open_category(cfg, cls)
    items = category.test_items()
    cfg, method, ckpt_dir = load_trained(cfg, cls)
    one_process_for_tiles(cfg)
    tiling = Tiling.from_config(cfg)
    test_set = TestDataset(items, None if tiling else cfg["image_size"], category.defect_kinds)
    bad = test_set.find_bad()  # every image and mask read before the first forward pass
    if bad and not cfg["skip_bad_images"]:
        raise_if_bad(bad)
    for _, message in bad:
        log.warning("skipped: %s", message)
    test_set = test_set.without(i for i, _ in bad)
    engine = scoring_engine(method, cfg)
    calibration = read_calibration(ckpt_dir)
    distributed.barrier()  # several processes: all have read it before the main one writes it
    calibrated_here = calibration is None
    if calibrated_here:  # a checkpoint from before calibration existed: make it now
        train_set, val_set = training_side(cfg, cls, category)
        calibration = calibrate(engine.run, train_set.preload(), val_set.preload(),
                                cfg["eval_batch_size"], cfg["seed"],
                                cfg["threshold_policy"] or DEFAULT_POLICY, tiling)
        if distributed.is_main():
            write_calibration(ckpt_dir, calibration)
    if not distributed.is_main():  # several processes: score this one's share, gathered to
        run_inference(engine.run, test_set, cfg["eval_batch_size"], desc="scoring test images")  # the main one
        return None  # (the run_inference call that evaluate_dataset makes there)
    if tiling is not None and cfg["eval_resolution"] != "original":
        log.info("[%s] tiled model: maps and pixel metrics at the photos' own resolution", cls)
    result, scores, maps, pro_curve = evaluate_dataset(engine.run, test_set, cfg["eval_batch_size"],
                                                       cfg["eval_resolution"], category.subsets, tiling)
    threshold = resolve_threshold(ckpt_dir, cfg["threshold_policy"], cfg["threshold"],
                                  test_f1_threshold=result["f1_threshold"])
    labels = np.array([item.label for item in test_set.items])
    types = [item.defect_type for item in test_set.items]
    result["threshold"] = threshold.as_dict()
    result["decision"] = (None if threshold.value is None else
                          metrics.decision_metrics(labels, scores, threshold.value, types))
    result["training_side_thresholds"] = calibration["candidates"]
    result["skipped"] = [message for _, message in bad]
    write_json(os.path.join(ckpt_dir, EVAL_METRICS_FILE), result)

    candidates = calibration["candidates"].items()
    notes = [f"{len(test_set)} test images from {category.root}",
             "Training-side thresholds: " + ", ".join(
                 f"{k} {'-' if v is None else format(v, '.4g')}" for k, v in candidates)]
    notes += [f"skipped (unreadable): {message}" for _, message in bad]
    notes.append(f"Pixel metrics at the {cfg['eval_resolution']} resolution; image AUROC from "
                 f"{result['image_score']}")
    warning = few_validation_warning(calibration, threshold.policy)
    if warning and not _training_warned(calibration, calibrated_here):
        log.warning("[%s] %s", cls, warning)
    write_eval_folder(os.path.join(ckpt_dir, "eval"), test_set, category.root, maps, scores, result,
                      pro_curve, threshold, calibration, [(items[i], m) for i, m in bad],
                      cfg["save_format"], f"{cfg['model']} / {cls}", notes, maps_folder=cls,
                      warnings=[warning] if warning else [], metadata=run_metadata(cfg, ckpt_dir))
    log.info("[%s] overlays, masks, maps, df_test.csv, df_training.csv and report.html in %s",
             cls, os.path.join(ckpt_dir, "eval"))
    if cfg["save_format"] == "tiff":
        log.info("[%s] maps for the official MVTec evaluation scripts: --anomaly_maps_dir %s "
                 "--evaluated_objects %s", cls, os.path.join(ckpt_dir, "eval", MAPS_FOLDER), cls)
    return result


def _training_warned(calibration, calibrated_here):
    """Whether training logged the few-validation-images warning of this calibration already:
    eval then leaves it to report.html instead of saying it a second time."""
    return not calibrated_here and few_validation_warning(calibration, calibration["policy"]) is not None


def report(cfg, results):
    write_metrics_summaries(cfg["output_dir"], cfg["model"], results)
    print(format_table({"categories": results, "mean": mean_over_categories(list(results.values()))}))
    for cls, result in results.items():
        if result.get("subsets") or result.get("au_spro"):
            print()
            print(format_subsets(cls, result))
        if result.get("decision"):
            print()
            print(format_decision(cls, result))
