"""Everything ``main.py --mode eval`` writes for one category into ``<checkpoint>/eval/``:
per-image overlays, masks and maps mirroring ``test/<type>/``, df_test.csv, df_training.csv,
metrics.json and report.html. The folder is replaced as a whole by each run (outputs.RunFolder).
"""
import os

import cv2
import numpy as np

from adkit.evaluate.calibration import scores_of
from adkit.core.io_utils import write_json
from adkit.outputs.folders import ImageOutputs, RunFolder, display_range, write_training_csv
from adkit.outputs.report import Example, ReportData, write_report
from adkit.core.progress import progress
from adkit.outputs.visualize import encode_png, ground_truth_view, side_by_side

EXAMPLES_PER_GROUP = 6
MAPS_FOLDER = "anomaly_maps"
THUMBNAIL_WIDTH = 520  # two pictures side by side


def write_eval_folder(folder, test_set, root, maps, scores, result, pro_curve, threshold,
                      calibration, skipped, save_format, title, notes, maps_folder="", warnings=(),
                      metadata=None):
    """``test_set``: the datasets.TestDataset that was scored; ``root``: the category folder the
    outputs mirror (maps under anomaly_maps/<maps_folder>/, the official scripts' layout when
    ``maps_folder`` is the category name); ``maps``/``scores``: model-size maps and image scores; ``result``: the
    metrics dict with its decision table; ``skipped``: [(TestItem, message)] not scored;
    ``warnings`` shown at the top of the report, ``metadata`` {name: value} what made the run."""
    from adkit.core.image_io import read_rgb

    items = test_set.items
    labels = np.array([item.label for item in items])
    picks = pick_examples(labels, scores, threshold.value)
    wanted = {i: name for name, members in picks.items() for i in members}
    thumbnails = {}
    with RunFolder(folder) as run:
        run.info.update(title=title, threshold=threshold.as_dict(), images=len(items) + len(skipped))
        value_range = display_range(calibration["map_range"], threshold.value)
        outputs = ImageOutputs(run, threshold.value, value_range, save_format,
                               os.path.join(MAPS_FOLDER, maps_folder))
        for i, item in enumerate(progress(items, total=len(items), desc="writing overlays and maps", unit="images")):
            image = read_rgb(item.path)
            overlay = outputs.add(item.path, os.path.relpath(item.path, root), image,
                                  maps[i], scores[i], item.defect_type, _truth(item))
            if i in wanted:  # the plain image with its ground truth beside the heat map
                mask = test_set.full_mask(i) if item.label == 1 else None
                thumbnails[i] = _thumbnail_png(side_by_side(
                    ground_truth_view(image, mask, overlay.shape[0]), overlay))
        for item, message in skipped:
            outputs.skip(item.path, message, item.defect_type, _truth(item))
        outputs.write_csv()
        write_training_csv(run, calibration, threshold.value)
        write_json(run.file("metrics.json"), result)
        examples = {name: [Example(f"{os.path.relpath(items[i].path, root)}  score {scores[i]:.4g}",
                                   thumbnails[i]) for i in members]
                    for name, members in picks.items()}
        write_report(run.file("report.html"), ReportData(
            title=title, metrics=result, decision=result["decision"] or {},
            threshold=threshold.as_dict(), labels=labels, scores=scores,
            defect_types=[item.defect_type for item in items], pro_curve=pro_curve,
            val_scores=scores_of(calibration, "val"),
            synthetic_scores=scores_of(calibration, "synthetic"), examples=examples, notes=notes,
            warnings=list(warnings), metadata=dict(metadata or {})))


def pick_examples(labels, scores, threshold, count=EXAMPLES_PER_GROUP):
    """{group: [test image index]} shown in the report: good images flagged as defects, highest
    score first (worst false alarms); defects passed as good, lowest first (missed); and the
    defects scored highest. Without a threshold: highest goods and lowest defects."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    good = [int(i) for i in order if labels[i] == 0]
    defects = [int(i) for i in order if labels[i] == 1]
    if threshold is not None:
        good = [i for i in good if scores[i] >= threshold]
        missed = [i for i in reversed(defects) if scores[i] < threshold]
    else:
        missed = list(reversed(defects))
    missed = missed[:count]
    return {"Worst false alarms": good[:count], "Missed defects": missed,
            "Best detections": [i for i in defects if i not in missed][:count]}


def _truth(item):
    return "good" if item.label == 0 else "defect"


def _thumbnail_png(image):
    h, w = image.shape[:2]
    if w > THUMBNAIL_WIDTH:
        size = (THUMBNAIL_WIDTH, max(1, round(h * THUMBNAIL_WIDTH / w)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return encode_png(image)


SUMMARY_FILE = "metrics.json"


def write_metrics_summaries(output_dir, model, results):
    """Merge this eval's ``results`` {category: metrics} into the summaries that outlive one run:
    ``<output_dir>/<model>/metrics.json`` ({"model", "categories", "mean"}: every category
    evaluated with this model so far, the newest result of each) and ``<output_dir>/metrics.json``
    ({"models": {model: that summary}}: every model). Each file is rewritten atomically, so an
    eval of gravel keeps brick, and an eval of padim keeps rd4ad."""
    from adkit.evaluate.evaluation import mean_over_categories
    from adkit.core.io_utils import read_json

    def existing(path):
        try:
            data = read_json(path)
        except (OSError, ValueError):  # none yet, or unreadable: start again
            return {}
        return data if isinstance(data, dict) else {}

    model_path = os.path.join(output_dir, model, SUMMARY_FILE)
    categories = dict(existing(model_path).get("categories") or {})
    categories.update(results)
    summary = {"model": model, "categories": categories,
               "mean": mean_over_categories(list(categories.values()))}
    write_json(model_path, summary)
    top_path = os.path.join(output_dir, SUMMARY_FILE)
    models = dict(existing(top_path).get("models") or {})
    models[model] = summary
    write_json(top_path, {"models": models})
