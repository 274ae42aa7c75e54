#!/usr/bin/env python
"""Train, evaluate and run anomaly detectors on MVTec-layout data.

    python main.py --model rd4ad --mode train --data_dir sample_data --cls brick
    python main.py --model rd4ad --mode eval  --data_dir sample_data --cls brick
    python main.py --model rd4ad --mode infer --cls brick --img_path some/image.png
    python main.py --model efficientad_s --mode distill --data_dir IMAGES --output_dir weights
"""
import logging
import os
import sys

from adkit.errors import UserError, exit_on_user_error
from adkit.runtime import cpu_threads_from_argv, set_cpu_threads

log = logging.getLogger("adkit")


def checkpoint_dir(cfg, cls):
    return os.path.join(cfg["output_dir"], cfg["model"], cls)


def categories_for(cfg):
    from datasets import find_categories

    if cfg["cls"] == "all":
        return find_categories(cfg["data_dir"])
    return [cfg["cls"]]


def train(cfg, cls):
    from adkit.evaluation import run_inference
    from adkit.io_utils import write_json
    from adkit.predictions import VAL_SCORES_FILE
    from datasets import ImageDataset, MVTecCategory, split_train_val
    from models import build_method, save_training_config

    category = MVTecCategory(cfg["data_dir"], cls)
    train_paths, val_paths = split_train_val(category.train_paths(), cfg["val_ratio"], cfg["seed"])
    ckpt_dir = checkpoint_dir(cfg, cls)
    os.makedirs(ckpt_dir, exist_ok=True)
    log.info("[%s] training %s on %d images (%d held out for validation) -> %s",
             cls, cfg["model"], len(train_paths), len(val_paths), ckpt_dir)
    size = cfg["image_size"]
    train_set = ImageDataset(train_paths, size).preload()
    val_set = ImageDataset(val_paths, size).preload()
    method = build_method(cfg)
    save_training_config(cfg, ckpt_dir)  # first: eval/export can use interim checkpoints
    method.fit(train_set, val_set, ckpt_dir, resume=cfg["resume"])
    if len(val_set):
        _, scores = run_inference(method.inference_net(), val_set, cfg["eval_batch_size"], "validation")
        write_json(os.path.join(ckpt_dir, VAL_SCORES_FILE),
                   {"paths": val_set.paths, "scores": [float(s) for s in scores],
                    "threshold": float(scores.max())})
    log.info("[%s] training done", cls)


def load_trained(cfg, cls):
    from models import load_trained as load_from_folder

    ckpt_dir = checkpoint_dir(cfg, cls)
    cfg, method = load_from_folder(ckpt_dir, runtime_cfg=cfg, expected_model=cfg["model"])
    return cfg, method, ckpt_dir


def evaluate(cfg, cls):
    from adkit.evaluation import evaluate_dataset
    from adkit.io_utils import write_csv, write_json
    from adkit.predictions import EVAL_METRICS_FILE, format_score, label_of
    from datasets import MVTecCategory, TestDataset

    items = MVTecCategory(cfg["data_dir"], cls).test_items()
    cfg, method, ckpt_dir = load_trained(cfg, cls)
    test_set = TestDataset(items, cfg["image_size"])
    result, scores = evaluate_dataset(method.inference_net(), test_set, cfg["eval_batch_size"])
    write_json(os.path.join(ckpt_dir, EVAL_METRICS_FILE), result)
    threshold = result["threshold"]
    rows = [[item.path, item.defect_type, format_score(score), label_of(score, threshold), item.label]
            for item, score in zip(items, scores.tolist())]
    write_csv(os.path.join(ckpt_dir, "eval_predictions.csv"),
              ["path", "defect_type", "score", "predicted", "ground_truth"], rows)
    return result


def infer(cfg, cls):
    from adkit.evaluation import run_inference
    from adkit.predictions import resolve_threshold, write_image_outputs
    from datasets import ImageDataset, collect_images

    cfg, method, ckpt_dir = load_trained(cfg, cls)
    paths = collect_images(cfg["img_path"])
    maps, scores = run_inference(method.inference_net(), ImageDataset(paths, cfg["image_size"]),
                                 cfg["eval_batch_size"])
    threshold, source = resolve_threshold(cfg.get("threshold"), ckpt_dir)
    out_dir = os.path.join(ckpt_dir, "infer")
    rows, _ = write_image_outputs(out_dir, paths, maps, scores, threshold)
    log.info("[%s] threshold %s (%s)", cls, "n/a" if threshold is None else f"{threshold:.4f}", source)
    for path, score, label in rows:
        print(f"{score}\t{label or '-'}\t{path}")
    log.info("[%s] overlays and predictions.csv written to %s", cls, out_dir)


def report(cfg, results):
    from adkit.io_utils import write_json
    from adkit.evaluation import mean_over_categories

    summary = {"model": cfg["model"], "categories": results,
               "mean": mean_over_categories(list(results.values()))}
    for path in (os.path.join(cfg["output_dir"], "metrics.json"),
                 os.path.join(cfg["output_dir"], cfg["model"], "metrics.json")):
        write_json(path, summary)
    print(format_table(summary))


def format_table(summary):
    keys = ("image_auroc", "pixel_auroc", "aupro", "f1_max", "threshold")
    lines = [f"{'category':<16}" + "".join(f"{k:>13}" for k in keys)]
    rows = list(summary["categories"].items()) + [("mean", summary["mean"])]
    for name, values in rows:
        cells = "".join(f"{'-' if values.get(k) is None else format(values[k], '.4f'):>13}"
                        for k in keys)
        lines.append(f"{name:<16}{cells}")
    return "\n".join(lines)


@exit_on_user_error
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    set_cpu_threads(cpu_threads_from_argv(argv))  # must precede the first paddle import
    from adkit.config import resolve_config

    cfg = resolve_config(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    from adkit.runtime import seed_everything, set_device

    set_device(cfg["device"])
    seed_everything(cfg["seed"])
    if cfg["mode"] == "distill":
        from models.distill import run_distill

        run_distill(cfg)
        return
    if cfg["mode"] == "infer":
        if cfg["cls"] == "all":
            raise UserError("--mode infer needs --cls NAME: the category whose model to use")
        infer(cfg, cfg["cls"])
        return
    categories = categories_for(cfg)
    if cfg["mode"] == "train":
        for cls in categories:
            train(cfg, cls)
    else:
        report(cfg, {cls: evaluate(cfg, cls) for cls in categories})


if __name__ == "__main__":
    main()
