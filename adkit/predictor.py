"""The Python API: load a model folder once, then score images.

    from adkit import Predictor
    predictor = Predictor("inference/rd4ad_brick")          # or a checkpoint folder
    result = predictor.predict("part.png")                   # a path or an RGB uint8 array
    print(result.score, result.label)                        # result.map: float32 HxW

A folder written by export_model.py runs on Paddle Inference (or ONNX Runtime); a training
checkpoint folder (<output_dir>/<model>/<cls>) runs the dygraph net. Both give the same maps.
"""
import logging
import os
from dataclasses import dataclass

import numpy as np

from .calibration import read_calibration, resolve_threshold
from .deploy import DEPLOY_CONFIG, read_deploy_config
from .errors import UserError
from .outputs import display_range, label_of

log = logging.getLogger("adkit")


@dataclass
class Prediction:
    map: np.ndarray          # float32 anomaly map at the input image's size
    score: float             # image score (max of the map)
    label: str               # "defect", "good", or "" when no threshold is known
    threshold: float | None


class Predictor:
    def __init__(self, model_dir, backend="paddle", device="cpu", cpu_threads=2, enable_mkldnn=True,
                 use_tensorrt=False, precision="fp32", max_batch_size=1, gpu_id=0,
                 threshold=None, threshold_policy=None):
        """``threshold`` (a number) or ``threshold_policy`` override the stored threshold."""
        from .runtime import set_cpu_threads

        if not os.path.isdir(model_dir):
            raise UserError(f"{model_dir}: folder not found (expected an export_model.py folder "
                            "or a training checkpoint folder)")
        set_cpu_threads(cpu_threads)
        if os.path.isfile(os.path.join(model_dir, DEPLOY_CONFIG)):
            from .engines import create_engine

            info = read_deploy_config(model_dir)
            self.model = info["model"]
            self.image_size = int(info["image_size"])
            self.engine = create_engine(backend, model_dir, device=device, cpu_threads=cpu_threads,
                                        enable_mkldnn=enable_mkldnn, use_tensorrt=use_tensorrt,
                                        precision=precision, max_batch_size=max_batch_size,
                                        image_size=self.image_size, gpu_id=gpu_id)
            stored_range = info.get("map_range")
        else:
            from .registry import load_trained

            from .engines import DygraphEngine
            from .runtime import set_device

            set_device(device)
            cfg, method = load_trained(model_dir, runtime_cfg={"device": device, "cpu_threads": cpu_threads})
            self.model = cfg["model"]
            self.image_size = int(cfg["image_size"])
            self.engine = DygraphEngine(method.inference_net())
            stored_range = None
        self.model_dir = model_dir
        self.calibration = read_calibration(model_dir)
        self.threshold = resolve_threshold(model_dir, threshold_policy, threshold)
        if stored_range is None and self.calibration:
            stored_range = self.calibration["map_range"]
        self.map_range = stored_range

    def display_range(self, first_maps=None):
        """Colour scale for overlays: from calibration, else from the first maps of a run."""
        map_range = self.map_range
        if map_range is None:
            map_range = (float(np.median(first_maps)), float(np.max(first_maps)))
        return display_range(map_range, self.threshold.value)

    def preprocess(self, image):
        """RGB uint8 HxWx3 (any size) -> float32 3xSxS in [0,1], the input every engine takes."""
        from .image_io import model_input

        return model_input(image, self.image_size)

    def run(self, batch):
        """float32 [N,3,S,S] -> (model-size maps [N,S,S], scores [N])."""
        amap, score = self.engine.run(np.ascontiguousarray(batch, dtype=np.float32))
        return np.asarray(amap)[:, 0], np.asarray(score).reshape(-1)

    def predict(self, image):
        """One image (a path or an RGB uint8 HxWx3 array) -> Prediction."""
        from .image_io import map_at_size, read_rgb

        if isinstance(image, (str, os.PathLike)):
            image = read_rgb(os.fspath(image))
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise UserError(f"predict: expected an RGB uint8 HxWx3 array, got {image.dtype} {image.shape}")
        maps, scores = self.run(self.preprocess(image)[None])
        full = map_at_size(maps[0], image.shape[:2])
        score = float(scores[0])
        return Prediction(full, score, label_of(score, self.threshold.value), self.threshold.value)


def predict_into_folder(predictor, img_path, root, paths, run_folder, save_format="npy", batch_size=1,
                        skip_bad=False, warmup=0):
    """What both infer paths do: score ``paths`` (collected from ``img_path`` under ``root``)
    into ``run_folder`` (outputs.RunFolder, not yet entered) with df_test.csv and df_training.csv,
    then print one ``score<TAB>label<TAB>path`` line per image on stdout. Returns the timings
    of ``predict_files``."""
    from .outputs import ImageOutputs, result_line, write_training_csv

    threshold = predictor.threshold
    with run_folder:
        run_folder.info.update(model=predictor.model, model_dir=os.path.abspath(predictor.model_dir),
                               img_path=os.path.abspath(img_path), threshold=threshold.as_dict())
        outputs = ImageOutputs(run_folder, threshold.value, None, save_format)
        timings = predict_files(predictor, root, paths, outputs, batch_size, skip_bad, warmup)
        outputs.write_csv()
        write_training_csv(run_folder, predictor.calibration, threshold.value)
    log.info(
        "threshold %s (%s: %s); outputs in %s", "-" if threshold.value is None else
        f"{threshold.value:.6g}", threshold.policy, threshold.source, run_folder.path)
    for row in outputs.rows:
        print(result_line(row))
    return timings


def predict_files(predictor, root, paths, outputs, batch_size=1, skip_bad=False, warmup=0):
    """Score ``paths`` batch by batch and hand every image to ``outputs`` (ImageOutputs) as soon
    as its batch is done: memory stays flat however many images there are. Returns per-image
    seconds {"preprocess_time", "inference_time", "postprocess_time"} without the first
    ``warmup`` batches. A bad image stops the run (one line naming it), or with ``skip_bad`` is
    logged and listed in the CSV as skipped."""
    import time

    from .image_io import folder_label, read_rgb

    from .training import progress

    timings = {"preprocess_time": [], "inference_time": [], "postprocess_time": []}
    pending = []
    batches_done = 0

    def flush():
        nonlocal batches_done
        t0 = time.perf_counter()
        batch = np.stack([predictor.preprocess(image) for _, image, _ in pending])
        t1 = time.perf_counter()
        maps, scores = predictor.run(batch)
        t2 = time.perf_counter()
        if outputs.value_range is None:
            outputs.value_range = predictor.display_range(maps)
        for (path, image, read_seconds), amap, score in zip(pending, maps, scores):
            outputs.add(path, os.path.relpath(path, root), image, amap, score, *folder_label(path))
        t3 = time.perf_counter()
        if batches_done >= warmup:
            n = len(pending)
            read = sum(seconds for _, _, seconds in pending)
            timings["preprocess_time"].extend([(read + t1 - t0) / n] * n)
            timings["inference_time"].extend([(t2 - t1) / n] * n)
            timings["postprocess_time"].extend([(t3 - t2) / n] * n)
        batches_done += 1
        pending.clear()

    for path in progress(paths, total=len(paths), desc="predicting"):
        start = time.perf_counter()
        try:
            image = read_rgb(path)
        except UserError as err:
            if not skip_bad:
                raise
            log.warning("skipped: %s", err)
            outputs.skip(path, str(err).removeprefix(f"{path}: "), *folder_label(path))
            continue
        pending.append((path, image, time.perf_counter() - start))
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    return timings
