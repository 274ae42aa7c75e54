#!/usr/bin/env python
"""Train, evaluate and run anomaly detectors on MVTec-layout data.

    python main.py --model rd4ad --mode train --data_dir sample_data --cls brick
    python main.py --model rd4ad --mode eval  --data_dir sample_data --cls brick
    python main.py --model rd4ad --mode infer --cls brick --img_path some/image.png
    python main.py --model efficientad_s --mode distill --data_dir IMAGES --output_dir weights

Several devices: python -m paddle.distributed.launch --devices 0,1 main.py ... (README).
"""
import contextlib
import logging
import os
import shlex
import sys

from adkit.errors import UserError, exit_on_user_error
from adkit.runtime import cpu_threads_from_argv, set_cpu_threads, setup_logging

log = logging.getLogger("adkit")


def checkpoint_dir(cfg, cls):
    return os.path.join(cfg["output_dir"], cfg["model"], cls)


def categories_for(cfg):
    from datasets import find_categories

    if cfg["cls"] == "all":
        return find_categories(cfg)
    return [cfg["cls"]]


def training_side(cfg, cls, category=None):
    """(train set, validation set) of good images: the dataset's own validation images where
    it has them (MVTec LOCO), else split off the training images as training split them."""
    from datasets import ImageDataset, open_category, split_train_val

    category = category or open_category(cfg, cls)
    val_paths = category.val_paths()
    if val_paths is None:
        train_paths, val_paths = split_train_val(category.train_paths(), cfg["val_ratio"], cfg["seed"])
    else:
        train_paths = category.train_paths()
    size = cfg["image_size"]
    return ImageDataset(train_paths, size), ImageDataset(val_paths, size)


def train(cfg, cls):
    from adkit import distributed
    from adkit.calibration import calibrate, check_policy_applies, few_validation_warning, write_calibration
    from adkit.engines import scoring_engine
    from adkit.io_utils import new_folder
    from adkit.registry import build_method, save_training_config
    from adkit.thresholds import DEFAULT_POLICY
    from adkit.trainer import CHECKPOINT_FILE

    train_set, val_set = training_side(cfg, cls)
    policy = cfg["threshold_policy"] or DEFAULT_POLICY
    check_policy_applies(policy, len(val_set))
    train_set.preload()
    val_set.preload()
    ckpt_dir = checkpoint_dir(cfg, cls)
    if cfg["log_dir"]:  # one curve per category
        cfg = dict(cfg, log_dir=os.path.join(cfg["log_dir"], cfg["model"], cls))
    main_process = distributed.is_main()  # several processes: only it writes files
    # a run that fails before its first checkpoint leaves no folder behind
    with (new_folder(ckpt_dir, keep=lambda: os.path.isfile(os.path.join(ckpt_dir, CHECKPOINT_FILE)))
          if main_process else contextlib.nullcontext()):
        log.info("[%s] training %s on %d images (%d held out for validation) -> %s",
                 cls, cfg["model"], len(train_set), len(val_set), ckpt_dir)
        method = build_method(cfg)
        if main_process:
            save_training_config(cfg, ckpt_dir)  # first: eval/export can use interim checkpoints
        method.fit(train_set, val_set, ckpt_dir, resume=cfg["resume"])
    calibration = calibrate(scoring_engine(method, cfg).run, train_set, val_set,
                            cfg["eval_batch_size"], cfg["seed"], policy)
    if not main_process:  # it scored its share of the images; the main process writes
        distributed.barrier()
        return
    write_calibration(ckpt_dir, calibration)
    distributed.barrier()
    value = calibration["threshold"]["value"]
    log.info("[%s] training done; threshold %s (%s)", cls,
             "-" if value is None else f"{value:.6g}", calibration["policy"])
    warning = few_validation_warning(calibration, calibration["policy"])
    if warning:
        log.warning("[%s] %s", cls, warning)


def run_metadata(cfg, ckpt_dir):
    """What made an eval's numbers, for report.html: the model and its training options, the
    checkpoint, the date and the versions of the packages that computed them."""
    import datetime
    import platform

    import cv2
    import numpy
    import paddle

    from adkit import __version__
    from adkit.trainer import CHECKPOINT_FILE

    checkpoint = os.path.join(ckpt_dir, CHECKPOINT_FILE)
    written = (datetime.datetime.fromtimestamp(os.path.getmtime(checkpoint)).isoformat(timespec="seconds")
               if os.path.isfile(checkpoint) else "-")
    options = {"model": cfg["model"], "backbone": cfg.get("backbone") or "-",
               "steps": cfg.get("steps") or "-", "epochs": cfg.get("epochs") or "-",
               "image size": cfg["image_size"], "seed": cfg["seed"],
               "checkpoint": f"{os.path.abspath(ckpt_dir)} (written {written})",
               "evaluated": datetime.datetime.now().isoformat(timespec="seconds"),
               "versions": f"paddleAD {__version__}, Paddle {paddle.__version__}, numpy {numpy.__version__}, "
                           f"OpenCV {cv2.__version__}, Python {platform.python_version()}"}
    return options


def load_trained(cfg, cls):
    from adkit.registry import load_trained as load_from_folder

    ckpt_dir = checkpoint_dir(cfg, cls)
    cfg, method = load_from_folder(ckpt_dir, runtime_cfg=cfg, expected_model=cfg["model"])
    return cfg, method, ckpt_dir


def evaluate(cfg, cls):
    """Metrics, decision tables, report.html and per-image outputs (<ckpt>/eval/) for one category."""
    import numpy as np

    from adkit import distributed, metrics
    from adkit.calibration import (EVAL_METRICS_FILE, calibrate, few_validation_warning,
                                   read_calibration, resolve_threshold, write_calibration)
    from adkit.engines import scoring_engine
    from adkit.eval_outputs import MAPS_FOLDER, write_eval_folder
    from adkit.evaluation import evaluate_dataset, run_inference
    from adkit.io_utils import write_json
    from adkit.thresholds import DEFAULT_POLICY
    from datasets import TestDataset, open_category, raise_if_bad

    category = open_category(cfg, cls)
    items = category.test_items()
    cfg, method, ckpt_dir = load_trained(cfg, cls)
    test_set = TestDataset(items, cfg["image_size"], category.defect_kinds)
    bad = test_set.find_bad()  # every image and mask read before the first forward pass
    if bad and not cfg["skip_bad_images"]:
        raise_if_bad(bad)
    for _, message in bad:
        log.warning("skipped: %s", message)
    test_set = test_set.without(i for i, _ in bad)
    engine = scoring_engine(method, cfg)
    calibration = read_calibration(ckpt_dir)
    distributed.barrier()  # several processes: all have read it before the main one writes it
    if calibration is None:  # a checkpoint from before calibration existed: make it now
        train_set, val_set = training_side(cfg, cls, category)
        calibration = calibrate(engine.run, train_set.preload(), val_set.preload(),
                                cfg["eval_batch_size"], cfg["seed"],
                                cfg["threshold_policy"] or DEFAULT_POLICY)
        if distributed.is_main():
            write_calibration(ckpt_dir, calibration)
    if not distributed.is_main():  # several processes: score this one's share, gathered to
        run_inference(engine.run, test_set, cfg["eval_batch_size"], desc="eval")  # the main one
        return None  # (the run_inference call that evaluate_dataset makes there)
    result, scores, maps, pro_curve = evaluate_dataset(engine.run, test_set, cfg["eval_batch_size"],
                                                       cfg["eval_resolution"], category.subsets)
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
    if warning:
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


def infer(cfg, cls):
    from adkit import Predictor
    from adkit.outputs import RunFolder
    from adkit.predictor import predict_into_folder
    from adkit.image_io import collect_images

    root, paths = collect_images(cfg["img_path"])
    ckpt_dir = checkpoint_dir(cfg, cls)
    run_folder = RunFolder(os.path.join(ckpt_dir, "infer"))
    predictor = Predictor(ckpt_dir, device=cfg["device"], cpu_threads=cfg["cpu_threads"],
                          threshold=cfg["threshold"], threshold_policy=cfg["threshold_policy"])
    if predictor.model != cfg["model"]:
        raise UserError(f"{ckpt_dir}: checkpoint is for --model {predictor.model}, not {cfg['model']}")
    predict_into_folder(predictor, cfg["img_path"], root, paths, run_folder, cfg["save_format"],
                        cfg["eval_batch_size"], cfg["skip_bad_images"])


def train_categories(cfg, categories, argv):
    """Several processes: a data-parallel method trains each category with all of them; any
    other gives each process every world_size-th category, trained alone (EfficientAD's batch
    is 1; PatchCore and PaDiM fit in one pass). One process: each category in turn."""
    from adkit import distributed

    from adkit.registry import spec_for

    world = distributed.world_size()
    if world == 1 or spec_for(cfg["model"]).data_parallel:
        distributed.check_batch_size(cfg["batch_size"])  # split evenly over the processes
        for cls in categories:
            with resume_advice(argv):
                train(cfg, cls)
        return
    mine = categories[distributed.rank()::world]
    logging.getLogger("adkit").setLevel(logging.INFO)  # each process reports its own categories
    log.info("process %d of %d: %s trains each category in one process; this one: %s",
             distributed.rank(), world, cfg["model"], ", ".join(mine) or "none")
    for cls in mine:
        with resume_advice(argv), distributed.local():
            train(cfg, cls)


def report(cfg, results):
    from adkit.eval_outputs import write_metrics_summaries
    from adkit.evaluation import mean_over_categories

    write_metrics_summaries(cfg["output_dir"], cfg["model"], results)
    print(format_table({"categories": results, "mean": mean_over_categories(list(results.values()))}))
    for cls, result in results.items():
        if result.get("subsets") or result.get("au_spro"):
            print()
            print(format_subsets(cls, result))
        if result.get("decision"):
            print()
            print(format_decision(cls, result))


def _cell(value, width=11):
    return f"{'-' if value is None else format(value, '.4f'):>{width}}"


def format_table(summary):
    keys = ("image_auroc", "pixel_auroc", "aupro", "f1_max", "accuracy", "precision", "recall")
    rows = list(summary["categories"].items()) + [("mean", summary["mean"])]
    width = _name_width(name for name, _ in rows)
    lines = [f"{'category':<{width}}" + "".join(f"{k:>12}" for k in keys)]
    for name, values in rows:
        decision = (values.get("decision") or {}).get("overall", values)
        merged = {**values, **{k: decision.get(k) for k in ("accuracy", "precision", "recall")}}
        lines.append(f"{name:<{width}}" + "".join(_cell(merged.get(k), 12) for k in keys))
    return "\n".join(lines)


def _name_width(names, least=16):
    """First-column width: long category or defect-type names keep the columns aligned."""
    return max([least] + [len(str(name)) + 2 for name in names])


def format_subsets(cls, result):
    """Each subset (MVTec LOCO: logical, structural) and the whole set, with AU-sPRO at the
    official script's FPR limits when the dataset defines saturation thresholds."""
    limits = list(result.get("au_spro") or {})
    keys = ("image_auroc", "pixel_auroc", "aupro")
    rows = list((result.get("subsets") or {}).items()) + [("all", result)]
    title = f"{cls} subsets"
    width = _name_width([name for name, _ in rows] + [title])
    lines = [f"{title:<{width}}" + "".join(f"{k:>12}" for k in keys)
             + "".join(f"{'au_spro@' + limit:>14}" for limit in limits)]
    for name, values in rows:
        spro = values.get("au_spro") or {}
        lines.append(f"{name:<{width}}" + "".join(_cell(values.get(k), 12) for k in keys)
                     + "".join(_cell(spro.get(limit), 14) for limit in limits))
    return "\n".join(lines)


def format_decision(cls, result):
    """The table users of the custom-dataset EfficientAD fork expect, at the deployment threshold."""
    decision, threshold = result["decision"], result["threshold"]
    overall, c = decision["overall"], decision["overall"]["confusion"]
    width = _name_width(decision["per_type"])
    lines = [f"{cls}: threshold {threshold['value']:.6g} "
             f"({threshold['policy']}: {threshold['source']})",
             f"{'type':<{width}}{'count':>7}{'flagged':>9}{'accuracy':>11}"]
    for name, row in decision["per_type"].items():
        lines.append(f"{name:<{width}}{row['count']:>7}{row['predicted_defect']:>9}"
                     f"{_cell(row['accuracy'])}")
    lines.append(f"{'overall':<{width}}{overall['count']:>7}{c['tp'] + c['fp']:>9}"
                 f"{_cell(overall['accuracy'])}   precision {_cell(overall['precision'], 0)}"
                 f"  recall {_cell(overall['recall'], 0)}  F1 {_cell(overall['f1'], 0)}")
    lines.append(f"confusion (rows truth, cols predicted): good [{c['tn']} {c['fp']}]  "
                 f"defect [{c['fn']} {c['tp']}]")
    return "\n".join(lines)


@contextlib.contextmanager
def resume_advice(argv):
    """An interrupted training run names the exact command that continues it."""
    from adkit.distributed import launched_world_size
    from adkit.trainer import TrainingInterrupted

    try:
        yield
    except TrainingInterrupted as stop:
        world = launched_world_size()  # started by paddle.distributed.launch: the same again
        launcher = (["python", "-m", "paddle.distributed.launch", "--nproc_per_node", str(world)]
                    if world > 1 else ["python"])
        command = shlex.join(launcher + ["main.py", *argv]
                             + ([] if "--resume" in argv else ["--resume"]))
        raise TrainingInterrupted(f"{stop}; continue with: {command}", stop.step) from None


@exit_on_user_error
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    # before the first Paddle import: threads, and whether Paddle's C++ messages show
    set_cpu_threads(cpu_threads_from_argv(argv), verbose="--verbose" in argv)
    from adkit.config import resolve_config

    cfg = resolve_config(argv)
    setup_logging()
    from adkit.runtime import seed_everything, set_device

    set_device(cfg["device"])
    from adkit import distributed
    from adkit.trainer import set_mixed_precision

    if distributed.init() > 1 and not distributed.is_main():
        logging.getLogger("adkit").setLevel(logging.WARNING)  # the main process logs
    set_mixed_precision(cfg["amp"])
    seed_everything(cfg["seed"])
    from adkit.registry import spec_for

    spec = spec_for(cfg["model"])
    if cfg["mode"] in spec.modes:  # a mode the method adds (EfficientAD: distill)
        with resume_advice(argv):
            spec.mode_runner(cfg["mode"])(cfg)
        return
    if cfg["mode"] == "infer":
        if cfg["cls"] == "all":
            raise UserError("--mode infer needs --cls NAME: the category whose model to use")
        infer(cfg, cfg["cls"])  # several processes: each scores its share (predict_into_folder)
        return
    categories = categories_for(cfg)
    if cfg["mode"] == "train":
        train_categories(cfg, categories, argv)
    else:
        results = {cls: evaluate(cfg, cls) for cls in categories}
        if distributed.is_main():
            report(cfg, results)


if __name__ == "__main__":
    main()
