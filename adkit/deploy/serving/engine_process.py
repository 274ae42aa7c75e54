"""The served model's engine in a child process of its own.

Paddle Inference holds Python's GIL for the whole of a run (measured: a Python thread beside a
100 ms batch gets no turn until it ends), so an engine in the server's process would stop
decoding, HTTP and answers while every batch runs. In a child process it runs beside them;
batches and maps cross a pipe as raw float32 bytes (a few ms per batch of 8 at 256 px). The
child ignores SIGINT / SIGTERM (Ctrl-C reaches the whole process group): the server stops it
once its requests are answered, and it exits by itself when the server's end of the pipe
closes."""
import multiprocessing
import signal

import numpy as np

from adkit.core.errors import UserError
from adkit.core.image_io import image_hw
from adkit.core.tiling import Tiling
from adkit.deploy.predictor import PredictorBase
from adkit.evaluate.thresholds import Threshold


class EngineFailed(RuntimeError):
    """The child process died or its engine raised: the batch gets no result."""


def _ignore_stop_signals():
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _child(conn, model_dir, options):
    _ignore_stop_signals()
    try:
        from adkit.core.image_io import to_chw_float
        from adkit.core.runtime import tune_process
        from adkit.deploy.predictor import Predictor

        tune_process(options.get("cpu_threads", 2))  # this process is the service's own
        predictor = Predictor(model_dir, **options)
        # again: importing Paddle installs its own SIGTERM handler (it dies with a C++ traceback),
        # which a signal to the whole group (systemd's default stop) would reach
        _ignore_stop_signals()
        predictor.run(np.zeros((1, 3, *predictor.image_size), np.float32))  # warm-up: the first run is slow
    except BaseException as err:  # noqa: BLE001 (everything goes back to the server as one line)
        conn.send(("failed", isinstance(err, UserError), str(err) or type(err).__name__))
        return
    conn.send(("ready", {"model": predictor.model, "image_size": list(predictor.image_size),
                         **(predictor.tiling.as_config() if predictor.tiling else {}),
                         "map_range": predictor.map_range, "threshold": predictor.threshold.as_dict()}))
    while True:
        try:
            shape = conn.recv()
        except EOFError:
            return  # the server is gone
        if shape is None:
            return
        resized = np.frombuffer(conn.recv_bytes(), np.uint8).reshape(shape)
        try:
            maps, scores = predictor.run(np.stack([to_chw_float(image) for image in resized]))
        except Exception as err:  # noqa: BLE001
            conn.send(("error", f"{type(err).__name__}: {err}"))
            continue
        maps = np.ascontiguousarray(maps, np.float32)
        conn.send(("ok", maps.shape))
        conn.send_bytes(memoryview(maps).cast("B"))
        conn.send_bytes(np.ascontiguousarray(scores, np.float64).tobytes())


class EngineProcess(PredictorBase):
    """A Predictor whose engine runs in a child process (``prediction`` and ``display_range``
    stay here; ``preprocess`` resizes here and the child finishes). Raises UserError, as Predictor does, when the folder does
    not load. ``run`` is for one thread at a time."""

    def __init__(self, model_dir, options):
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no state forked
        self._conn, child_end = context.Pipe()
        self._process = context.Process(target=_child, args=(child_end, model_dir, options),
                                        name="adkit-engine", daemon=True)
        self._process.start()
        child_end.close()
        try:
            reply = self._conn.recv()
        except EOFError:
            self._process.join(5)
            raise EngineFailed(f"the engine process for {model_dir} died while loading "
                               f"(exit code {self._process.exitcode})") from None
        if reply[0] == "failed":
            self._process.join(5)
            _, user_error, message = reply
            raise (UserError if user_error else EngineFailed)(message)
        info = reply[1]
        self.model_dir = model_dir
        self.model = info["model"]
        self.image_size = image_hw(info["image_size"])
        self.tiling = Tiling.from_config(info)
        self.map_range = info["map_range"]
        self.threshold = Threshold(**info["threshold"])

    def alive(self):
        return self._process.is_alive()

    def preprocess(self, image):
        """The model's inputs for one image, still uint8 (a quarter of the float tensor's bytes
        to send; the child makes them tensors, ``to_chw_float``, the second half of
        ``model_input``): the image resized to the model input, or a tiled model's
        (boxes, tiles [T,h,w,3]) (adkit.core.tiling)."""
        from adkit.core.image_io import resize_rgb

        if self.tiling is None:
            return resize_rgb(image, self.image_size)
        boxes = self.tiling.boxes(*image.shape[:2])
        return boxes, np.stack([self.tiling.cut(image, box) for box in boxes])

    def run(self, batch):
        """Model inputs [N,h,w,3] uint8 -> (model-size maps [N,h,w], scores [N])."""
        batch = np.ascontiguousarray(batch, np.uint8)
        try:
            self._conn.send(batch.shape)
            self._conn.send_bytes(memoryview(batch).cast("B"))
            reply = self._conn.recv()
            if reply[0] == "error":
                raise EngineFailed(reply[1])
            maps = np.frombuffer(self._conn.recv_bytes(), np.float32).reshape(reply[1])
            scores = np.frombuffer(self._conn.recv_bytes(), np.float64)
        except (EOFError, OSError):
            raise EngineFailed(f"the engine process stopped (exit code {self._process.exitcode})") from None
        return maps, scores

    def close(self):
        try:
            self._conn.send(None)
        except OSError:
            pass
        self._process.join(30)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)
        self._conn.close()
