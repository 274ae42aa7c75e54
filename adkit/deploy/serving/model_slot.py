"""The model being served, and swapping in another one without dropping a request."""
import asyncio
import concurrent.futures
import hashlib
import logging
import os

from adkit.deploy.serving.batcher import MicroBatcher

log = logging.getLogger("adkit")


def model_version(model_dir):
    """First 12 hex digits of the SHA-256 of the folder's top-level files (graph, weights,
    calibration, configs; subfolders such as eval/ left out): changes whenever the model or
    its threshold does, and names it in answers and the audit log."""
    digest = hashlib.sha256()
    for name in sorted(os.listdir(model_dir)):
        path = os.path.join(model_dir, name)
        if not os.path.isfile(path) or name.startswith(".") or name.endswith((".log", ".csv")):
            continue
        digest.update(name.encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:12]


class ModelRoot:
    """serve.py --model_root: the folder whose subfolders a reload request may name, besides
    the --model_dir the service started with. Paths are compared once symlinks and ".." are
    resolved, so neither a link inside the root nor "root/../elsewhere" reaches outside it."""

    def __init__(self, root, model_dir):
        self.root, self.model_dir = os.path.abspath(root), model_dir

    def refusal(self, model_dir):
        """None when ``model_dir`` may be loaded, else the one line that says why not."""
        try:
            real = os.path.realpath(model_dir)
        except ValueError:  # a NUL byte: no folder anywhere has that name
            return self._outside(repr(model_dir))
        if real == os.path.realpath(self.model_dir) or _strictly_inside(real, os.path.realpath(self.root)):
            return None
        return self._outside(model_dir if real == os.path.abspath(model_dir) else f"{model_dir} (that is {real})")

    def _outside(self, named):
        return f"{named} is outside --model_root {self.root}: the service loads only folders inside it"


def _strictly_inside(path, folder):
    """Whether ``path`` is below ``folder`` (both resolved); the folder itself is not."""
    try:
        return path != folder and os.path.commonpath([path, folder]) == folder
    except ValueError:  # Windows: another drive
        return False


class LoadedModel:
    """A model folder being served: its engine in a child process (engine_process), driven
    from one thread of this process (one batch at a time), and its version."""

    def __init__(self, model_dir, predictor_options):
        from adkit.deploy.serving.engine_process import EngineProcess

        self.model_dir = os.path.abspath(model_dir)
        self.predictor = EngineProcess(model_dir, predictor_options)
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="engine")
        self.version = model_version(model_dir)
        self.batcher = None

    def run(self, batch):
        return self._thread.submit(self.predictor.run, batch)

    def describe(self):
        threshold = self.predictor.threshold
        return {"model": self.predictor.model, "version": self.version, "model_dir": self.model_dir,
                "image_size": self.predictor.image_size, "threshold": threshold.as_dict()}

    def start_batching(self, max_batch, max_wait, max_queue, on_batch):
        self.batcher = MicroBatcher(self.run, max_batch, max_wait, max_queue, on_batch).start()

    def alive(self):
        return self.predictor.alive()

    async def close(self):
        """Finish the queued requests, then stop the engine process and its thread."""
        if self.batcher is not None:
            await self.batcher.close()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._thread.shutdown)
        await loop.run_in_executor(None, self.predictor.close)


class ModelSlot:
    """``current`` is the model new requests go to. ``swap`` loads another folder off the event
    loop and puts it in only once it has loaded and run; requests already queued finish on the
    old model. A folder that fails to load leaves the old model serving."""

    def __init__(self, model, batching, on_batch):
        self._batching = batching  # (max_batch, max_wait, max_queue)
        self._on_batch = on_batch
        self._lock = asyncio.Lock()
        self.current = model
        model.start_batching(*batching, on_batch)

    async def swap(self, model_dir, predictor_options):
        async with self._lock:  # one reload at a time
            loop = asyncio.get_running_loop()
            new = await loop.run_in_executor(None, LoadedModel, model_dir, predictor_options)
            new.start_batching(*self._batching, self._on_batch)
            old, self.current = self.current, new
            log.info("now serving %s (version %s); the previous model finishes its queue",
                     new.model_dir, new.version)
            loop.create_task(old.close())
            return new

    async def close(self):
        await self.current.close()
