"""The Python API: load a model folder once, then score images.

    from adkit import Predictor
    predictor = Predictor("inference/patchcore_brick")      # or a checkpoint folder
    result = predictor.predict("part.png")                   # a path or an RGB uint8 array
    print(result.score, result.label)                        # result.map: float32 HxW

A folder written by export_model.py runs on Paddle Inference (or ONNX Runtime); a training
checkpoint folder (<output_dir>/<model>/<cls>) runs the dygraph net. Both give the same maps.
"""
import contextlib
import logging
import os
import sys
from dataclasses import dataclass, field

import numpy as np

from adkit.evaluate.calibration import read_calibration, resolve_threshold
from adkit.deploy.exported import DEPLOY_CONFIG, read_deploy_config
from adkit.core.errors import UserError
from adkit.core.image_io import image_hw
from adkit.core.tiling import Tiling
from adkit.outputs.folders import display_range, label_of

log = logging.getLogger("adkit")


@dataclass
class Prediction:
    map: np.ndarray          # float32 anomaly map at the input image's size
    score: float             # image score (max of the map)
    label: str               # "defect", "good", or "" when no threshold is known
    threshold: float | None
    regions: list = field(default_factory=list)  # regions.defect_regions of the map: boxes, areas


TILE_BATCH = 8  # a tiled model's tiles per engine run (a few spread the per-run overhead)


class PredictorBase:
    """What a model's outputs mean, without its engine: the input size, the tiles, the
    threshold and the overlay colour scale (``model``, ``model_dir``, ``image_size`` (height,
    width), ``tiling`` (adkit.core.tiling.Tiling or None), ``threshold``, ``map_range``).
    Predictor adds the engine; the service's engine process runs that in a child process and
    keeps this part."""

    tiling = None
    tile_batch = TILE_BATCH
    _aspect_noted = False

    def display_range(self, first_maps=None):
        """Colour scale for overlays: from calibration, else from the first maps of a run."""
        map_range = self.map_range
        if map_range is None:
            map_range = (float(np.median(first_maps)), float(np.max(first_maps)))
        return display_range(map_range, self.threshold.value)

    def preprocess(self, image):
        """RGB uint8 HxWx3 (any size) -> float32 3xHxW in [0,1] at the model size, the input
        every engine takes (an untiled model's whole image)."""
        from adkit.core.image_io import aspect_note, model_input

        if not self._aspect_noted:  # once per model: each image of a run is alike
            self._aspect_noted = True
            note = aspect_note(image.shape[:2], self.image_size)
            if note:
                log.info("%s", note)
        return model_input(image, self.image_size)

    def score_images(self, images, tile_batch=TILE_BATCH, seconds=None):
        """[(map, score)] of RGB uint8 images: an untiled model's model-size maps and scores,
        the images run as one batch; a tiled model's photo-size maps (score = the map's max),
        ``tile_batch`` tiles per run (adkit.core.tiling.score_photo). ``seconds``: a dict whose
        "inference" (engine runs) and "preprocess" (the rest: resizing; cutting and stitching
        tiles) are increased."""
        import time

        from adkit.core.tiling import score_photo

        inference = 0.0

        def run(batch):
            nonlocal inference
            begin = time.perf_counter()
            out = self.run(batch)
            inference += time.perf_counter() - begin
            return out

        start = time.perf_counter()
        if self.tiling is None:
            results = list(zip(*run(np.stack([self.preprocess(image) for image in images]))))
        else:
            results = [score_photo(run, self.tiling, image, tile_batch) for image in images]
        seconds = {} if seconds is None else seconds
        seconds["inference"] = seconds.get("inference", 0.0) + inference
        seconds["preprocess"] = seconds.get("preprocess", 0.0) + time.perf_counter() - start - inference
        return results

    def prediction(self, model_map, score, image_hw):
        """One image's map (model-size, or a tiled model's at the image's size) and score ->
        Prediction at the image's size (``image_hw``)."""
        from adkit.core.image_io import map_at_size
        from adkit.evaluate.regions import defect_regions

        full = map_at_size(model_map, image_hw)
        score = float(score)
        threshold = self.threshold.value
        return Prediction(full, score, label_of(score, threshold), threshold,
                          defect_regions(full, threshold))


class Predictor(PredictorBase):
    def __init__(self, model_dir, backend="paddle", device="cpu", cpu_threads=2, enable_mkldnn=True,
                 use_tensorrt=False, precision="fp32", max_batch_size=1, gpu_id=0,
                 threshold=None, threshold_policy=None):
        """``threshold`` (a number) or ``threshold_policy`` override the stored threshold."""
        from adkit.core.runtime import checked_thread_count, import_paddle_quietly

        if not os.path.isdir(model_dir):
            raise UserError(f"{model_dir}: folder not found (expected an export_model.py folder "
                            "or a training checkpoint folder)")
        cpu_threads = checked_thread_count(cpu_threads)  # the engine's own: nothing process-wide
        import_paddle_quietly()
        if os.path.isfile(os.path.join(model_dir, DEPLOY_CONFIG)):
            from adkit.deploy.engines import create_engine

            info = read_deploy_config(model_dir)
            self.model = info["model"]
            self.image_size = image_hw(info["image_size"])
            self.tiling = Tiling.from_config(info)
            self.engine = create_engine(backend, model_dir, device=device, cpu_threads=cpu_threads,
                                        enable_mkldnn=enable_mkldnn, use_tensorrt=use_tensorrt,
                                        precision=precision, max_batch_size=max_batch_size,
                                        image_size=self.image_size, gpu_id=gpu_id)
            stored_range = info.get("map_range")
        else:
            from adkit.options.registry import load_trained

            from adkit.deploy.engines import scoring_engine
            from adkit.core.runtime import set_device

            set_device(device)
            cfg, method = load_trained(model_dir, runtime_cfg={"device": device, "cpu_threads": cpu_threads})
            self.model = cfg["model"]
            self.image_size = image_hw(cfg["image_size"])
            self.tiling = Tiling.from_config(cfg)
            self.engine = scoring_engine(method, cfg)
            stored_range = None
        # TensorRT's engine is built for at most max_batch_size
        self.tile_batch = max_batch_size if use_tensorrt else max(TILE_BATCH, max_batch_size)
        self.model_dir = model_dir
        self.calibration = read_calibration(model_dir)
        self.threshold = resolve_threshold(model_dir, threshold_policy, threshold)
        if stored_range is None and self.calibration:
            stored_range = self.calibration["map_range"]
        self.map_range = stored_range

    def run(self, batch):
        """float32 [N,3,H,W] at the model size -> (model-size maps [N,H,W], scores [N])."""
        amap, score = self.engine.run(np.ascontiguousarray(batch, dtype=np.float32))
        return np.asarray(amap)[:, 0], np.asarray(score).reshape(-1)

    def predict(self, image):
        """One image (a path or an RGB uint8 HxWx3 array) -> Prediction."""
        from adkit.core.image_io import read_rgb

        if isinstance(image, (str, os.PathLike)):
            image = read_rgb(os.fspath(image))
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise UserError(f"predict: expected an RGB uint8 HxWx3 array, got {image.dtype} {image.shape}")
        [(amap, score)] = self.score_images([image], self.tile_batch)
        return self.prediction(amap, score, image.shape[:2])


def refuse_bad_files(paths, skip_bad=False):
    """Every file of ``paths`` that cannot be an image, named in one error line before the
    model loads (eval names its bad files at once too). With ``skip_bad`` nothing is refused:
    each bad file is skipped when its turn comes."""
    from adkit.core.errors import raise_if_bad
    from adkit.core.image_io import image_file_problem

    if not skip_bad:
        raise_if_bad([problem for problem in map(image_file_problem, paths) if problem])


def predict_into_folder(predictor, img_path, root, paths, run_folder, save_format="npy", batch_size=1,
                        skip_bad=False, warmup=0):
    """What both infer paths do: score ``paths`` (collected from ``img_path`` under ``root``)
    into ``run_folder`` (outputs.RunFolder, not yet entered) with df_test.csv and df_training.csv,
    then print one ``score<TAB>label<TAB>path`` line per image on stdout. Returns the timings
    of ``predict_files`` (this process's).

    Several processes (adkit.core.distributed: ``main.py --mode infer`` under the launcher; every
    process calls this with the same arguments): process 0 enters ``run_folder`` and hands its
    staging folder and the overlays' colour scale to the others (``broadcast_object``); each
    scores its contiguous block of whole batches of ``paths`` (``distributed.shard``) and
    writes its images' files into that folder under the names one process gives them
    (``ImageOutputs.reserve``); the df_test.csv rows are gathered to process 0 in input order,
    which writes the CSVs and run.json, swaps the folder in and prints the lines while the
    others wait. A failure on any process removes the staging folder and raises on every
    process (on process 0: the failing process's own error line). One process: the same code,
    every collective a no-op."""
    from adkit.core import distributed
    from adkit.outputs.folders import ImageOutputs, result_line, write_training_csv

    threshold = predictor.threshold
    main = distributed.is_main()
    try:
        with contextlib.ExitStack() as stack:  # process 0: the RunFolder, left on any failure
            start, error = None, None
            try:
                if main:
                    if distributed.world_size() > 1:
                        stack.enter_context(_sigterm_leaves_no_folder(run_folder))
                    stack.enter_context(run_folder)
                    run_folder.info.update(
                        model=predictor.model, model_dir=os.path.abspath(predictor.model_dir),
                        img_path=os.path.abspath(img_path), threshold=threshold.as_dict())
                    value_range = (_display_range_up_front(predictor, paths, batch_size)
                                   if distributed.world_size() > 1 else None)  # one: from batch 1
                    start = (run_folder.staging, value_range)
            except Exception as err:
                error, start = err, _failure(err)
            start = distributed.broadcast_object(start)
            _raise_if_failed([start], error)
            staging, value_range = start
            run_folder.staging = staging  # the others write into process 0's staging folder
            outputs = ImageOutputs(run_folder, threshold.value, value_range, save_format)
            outputs.reserve(os.path.relpath(path, root) for path in paths)
            try:
                # whole batches: one process's batches, so the same maps to the last bit
                # (unless a skipped image shifts them)
                batches = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
                my_paths = [path for batch in distributed.shard(batches) for path in batch]
                timings = predict_files(predictor, root, my_paths, outputs, batch_size, skip_bad,
                                        warmup)
                mine = (outputs.rows, outputs.region_rows)
            except Exception as err:
                error, mine = err, _failure(err)
            distributed.barrier()  # (Gloo's 30 s limit: the blocks may take unequal times)
            reports = distributed.all_gather_object(mine)
            _raise_if_failed(reports, error)
            if main:
                # rank order: input order
                outputs.rows = [row for rows, _ in reports for row in rows]
                outputs.region_rows = [row for _, rows in reports for row in rows]
                outputs.write_csv()
                write_training_csv(run_folder, predictor.calibration, threshold.value)
    except Exception:
        distributed.barrier()  # the others stop once process 0 has removed the staging folder
        raise
    if main:
        log.info(
            "threshold %s (%s: %s); outputs in %s", "-" if threshold.value is None else
            f"{threshold.value:.6g}", threshold.policy, threshold.source, run_folder.path)
        for row in outputs.rows:
            print(result_line(row))
        sys.stdout.flush()
    distributed.barrier()  # several processes: the others wait for process 0's outputs
    return timings


@contextlib.contextmanager
def _sigterm_leaves_no_folder(run_folder):
    """Process 0 of several: when another process dies, the launcher ends this one with
    SIGTERM (up to three, 0.2 s apart, then SIGKILL), whose default action would leave the
    staging folder behind. Here the first removes it at once (wherever the signal lands, even
    in an ``__exit__``) and raises SystemExit; the others are ignored."""
    import shutil
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, _frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if run_folder.staging:  # gone already once swapped in
            shutil.rmtree(run_folder.staging, ignore_errors=True)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_FAILED = "adkit.deploy.predictor: failed"


def _failure(error):
    """What a process sends in place of its result when it failed: (marker, rank, whether it
    is a UserError, its message)."""
    from adkit.core import distributed

    return (_FAILED, distributed.rank(), isinstance(error, UserError),
            str(error) or type(error).__name__)


def _raise_if_failed(reports, own):
    """After an exchange every process knows whether any failed: each raises then, its own
    error first (so process 0 leaves the RunFolder with it, removing the staging folder)."""
    if own is not None:
        raise own
    for report in reports:
        if isinstance(report, tuple) and len(report) == 4 and report[0] == _FAILED:
            _, rank, user_error, message = report
            if user_error:
                raise UserError(message)  # the line one process would have given
            raise RuntimeError(f"process {rank} failed: {message} (its traceback: the "
                               f"launcher's log/workerlog.{rank})")


def _display_range_up_front(predictor, paths, batch_size):
    """The overlays' colour scale, fixed before the processes start on their blocks: the one
    ``predict_files`` takes in one process (from calibration, else from the maps of the first
    batch: the first ``batch_size`` readable images). None when no image is readable."""
    if getattr(predictor, "map_range", None) is not None:
        return predictor.display_range(None)
    from adkit.core.image_io import read_rgb

    images = []
    for path in paths:
        try:
            images.append(read_rgb(path))
        except UserError:
            continue  # its own process skips it or stops the run with its error
        if len(images) == batch_size:
            break
    if not images:
        return None
    results = predictor.score_images(images, predictor.tile_batch)
    return predictor.display_range(np.concatenate([np.ravel(amap) for amap, _ in results]))


def predict_files(predictor, root, paths, outputs, batch_size=1, skip_bad=False, warmup=0):
    """Score ``paths`` batch by batch and hand every image to ``outputs`` (ImageOutputs) as soon
    as its batch is done: memory stays flat however many images there are. Returns per-image
    seconds {"preprocess_time", "inference_time", "postprocess_time"} without the first
    ``warmup`` batches. A bad image stops the run (one line naming it), or with ``skip_bad`` is
    logged and listed in the CSV as skipped; the rows are in the order of ``paths``."""
    import time

    from adkit.core.image_io import folder_label, read_rgb

    from adkit.core.progress import progress

    timings = {"preprocess_time": [], "inference_time": [], "postprocess_time": []}
    pending = []
    skipped = []  # (position in pending, path, error): bad images read after pending ones
    batches_done = 0

    def skip(path, err):
        outputs.skip(path, str(err).removeprefix(f"{path}: "), *folder_label(path))

    def flush():
        nonlocal batches_done
        spent = {}
        results = predictor.score_images([image for _, image, _ in pending], predictor.tile_batch, spent)
        t2 = time.perf_counter()
        if outputs.value_range is None:
            outputs.value_range = predictor.display_range(np.concatenate([np.ravel(amap) for amap, _ in results]))
        for i, ((path, image, _), (amap, score)) in enumerate(zip(pending, results)):
            while skipped and skipped[0][0] == i:
                skip(*skipped.pop(0)[1:])
            outputs.add(path, os.path.relpath(path, root), image, amap, score, *folder_label(path))
        while skipped:
            skip(*skipped.pop(0)[1:])
        t3 = time.perf_counter()
        if batches_done >= warmup:
            n = len(pending)
            read = sum(seconds for _, _, seconds in pending)
            timings["preprocess_time"].extend([(read + spent["preprocess"]) / n] * n)
            timings["inference_time"].extend([spent["inference"] / n] * n)
            timings["postprocess_time"].extend([(t3 - t2) / n] * n)
        batches_done += 1
        pending.clear()

    for path in progress(paths, total=len(paths), desc="scoring images", unit="images"):
        start = time.perf_counter()
        try:
            image = read_rgb(path)
        except UserError as err:
            if not skip_bad:
                raise
            log.warning("skipped: %s", err)
            if pending:  # its row after those of the images read before it
                skipped.append((len(pending), path, err))
            else:
                skip(path, err)
            continue
        pending.append((path, image, time.perf_counter() - start))
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    return timings
