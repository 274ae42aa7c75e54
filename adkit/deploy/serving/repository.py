"""serve.py --model_repository DIR: every model folder under DIR, loaded when first asked for.

Each subfolder of DIR (an export or a checkpoint folder, whatever --model_dir takes) is a model
named after the folder. The folder list is scanned again at most every ``scan_interval``
seconds, on a request: a folder added is served, one removed is unloaded, one whose files
changed (size or mtime) is loaded again and swapped in as /reload does (a folder that fails to
load leaves the old engine serving). At most ``max_loaded`` engines stay loaded: loading
another unloads the least recently used one first (its queued requests finish). Each model
has its own lock, so concurrent first requests load it once.
"""
import asyncio
import logging
import os
import time

from adkit.core.errors import UserError
from adkit.deploy.serving.model_slot import LoadedModel, model_version

log = logging.getLogger("adkit")
SCAN_INTERVAL = 1.0  # seconds between two scans of the repository folder
VERSION_FILE = "version.json"  # main.py --mode update writes the version number beside the model


class UnknownModel(LookupError):
    """No folder of that name in the repository."""


class ModelUnavailable(RuntimeError):
    """The folder is there but does not load (the reason is the message)."""


def folder_signature(folder):
    """(name, size, mtime) of the folder's top-level files: changes when a file is replaced,
    written or copied in, without reading any of them."""
    entries = []
    try:
        with os.scandir(folder) as found:
            for entry in found:
                if entry.is_file() and not entry.name.startswith("."):
                    stat = entry.stat()
                    entries.append((entry.name, stat.st_size, stat.st_mtime_ns))
    except OSError:
        return None
    return tuple(sorted(entries))


def version_number(folder):
    """The model's version number (1 for a model never updated from reviews)."""
    from adkit.core.io_utils import read_json

    path = os.path.join(folder, VERSION_FILE)
    try:
        return int(read_json(path)["version"]) if os.path.isfile(path) else 1
    except (OSError, ValueError, KeyError, TypeError):
        return 1


def describe_folder(folder, predictor_options):
    """What GET /models says of a folder not loaded: method, version, threshold (read from its
    small files, the engine not built)."""
    from adkit.core.io_utils import read_json
    from adkit.evaluate.calibration import DEPLOY_CONFIG, resolve_threshold
    from adkit.options.registry import TRAIN_CONFIG_FILE

    for config in (DEPLOY_CONFIG, TRAIN_CONFIG_FILE):
        path = os.path.join(folder, config)
        if os.path.isfile(path):
            method = read_json(path).get("model")
            break
    else:
        raise UserError(f"{folder}: neither {DEPLOY_CONFIG} nor {TRAIN_CONFIG_FILE} (not a model folder)")
    threshold = resolve_threshold(folder, predictor_options.get("threshold_policy"),
                                  predictor_options.get("threshold"))
    return {"model": method, "version": model_version(folder), "version_number": version_number(folder),
            "threshold": threshold.as_dict()}


class RepositoryEntry:
    """One model folder: its last seen signature, its engine when loaded, its lock."""

    def __init__(self, name, folder, signature):
        self.name, self.folder, self.signature = name, folder, signature
        self.loaded = None  # LoadedModel
        self.loaded_signature = None  # the files the loaded engine was built from
        self.failed = None  # (signature, message) of the last failed load: not retried until the files change
        self.last_used = 0.0
        self.lock = asyncio.Lock()
        self._description = (None, None)  # (signature, dict)

    def description(self, predictor_options):
        if self.loaded is not None and self.loaded_signature == self.signature:
            described = self.loaded.describe()
            return {"model": described["model"], "version": described["version"],
                    "version_number": version_number(self.folder), "threshold": described["threshold"]}
        if self._description[0] != self.signature:
            try:
                self._description = (self.signature, describe_folder(self.folder, predictor_options))
            except (UserError, OSError, ValueError) as err:
                self._description = (self.signature, {"error": str(err)})
        return self._description[1]


class ModelRepository:
    def __init__(self, root, max_loaded, predictor_options, batching, on_batch, metrics,
                 scan_interval=SCAN_INTERVAL):
        self.root = os.path.abspath(root)
        self.max_loaded = max_loaded
        self.predictor_options = predictor_options
        self._batching = batching  # (max_batch, max_wait, max_queue)
        self._on_batch = on_batch
        self._metrics = metrics
        self.scan_interval = scan_interval
        self.entries = {}
        self._scanned = 0.0
        self._capacity = None  # asyncio.Lock: one load (with its evictions) at a time
        self.scan()

    def scan(self):
        """Bring the entries up to date with the folder (cheap: one stat per file)."""
        self._scanned = time.monotonic()
        try:
            names = sorted(e.name for e in os.scandir(self.root) if e.is_dir() and not e.name.startswith("."))
        except OSError as err:
            log.error("--model_repository %s: cannot list it (%s)", self.root, err)
            return
        for name in names:
            folder = os.path.join(self.root, name)
            signature = folder_signature(folder)
            entry = self.entries.get(name)
            if entry is None:
                self.entries[name] = RepositoryEntry(name, folder, signature)
                log.info("model repository: %s added", name)
            else:
                entry.signature = signature
        for name in [n for n in self.entries if n not in names]:
            entry = self.entries.pop(name)
            log.info("model repository: %s removed", name)
            if entry.loaded is not None:
                self._unload(entry)

    def maybe_scan(self):
        if time.monotonic() - self._scanned >= self.scan_interval:
            self.scan()

    def listing(self):
        """GET /models: name, method, version, threshold and state of every model folder."""
        self.maybe_scan()
        out = []
        for name, entry in sorted(self.entries.items()):
            described = entry.description(self.predictor_options)
            state = "loaded" if entry.loaded is not None else "failed" if entry.failed else "not loaded"
            out.append({"name": name, **described, "state": state,
                        **({"error": entry.failed[1]} if entry.failed and "error" not in described else {})})
        return out

    def loaded_count(self):
        return sum(entry.loaded is not None for entry in self.entries.values())

    async def model(self, name):
        """The LoadedModel serving ``name``: loaded (or reloaded, its files having changed) if
        needed. UnknownModel, or ModelUnavailable when it does not load and nothing older serves."""
        self.maybe_scan()
        entry = self.entries.get(name)
        if entry is None:
            raise UnknownModel(name)
        entry.last_used = time.monotonic()
        if entry.loaded is not None and entry.loaded_signature == entry.signature:
            return entry.loaded
        async with entry.lock:  # concurrent first requests: one loads, the others wait for it
            if entry.loaded is None or entry.loaded_signature != entry.signature:
                await self._load(entry)
            if entry.loaded is None:
                raise ModelUnavailable(entry.failed[1])
            return entry.loaded

    async def _load(self, entry):
        signature = entry.signature
        if entry.failed and entry.failed[0] == signature:
            return  # the same files failed already: wait for them to change
        if self._capacity is None:
            self._capacity = asyncio.Lock()
        async with self._capacity:
            if entry.loaded is None:  # a new engine: make room first (a swap keeps the count)
                await self._evict_for_one_more(entry)
            started = time.perf_counter()
            loop = asyncio.get_running_loop()
            try:
                new = await loop.run_in_executor(None, LoadedModel, entry.folder, self.predictor_options)
            except Exception as err:  # noqa: BLE001 (an older engine, if any, keeps serving)
                message = str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
                entry.failed = (signature, f"model {entry.name} does not load: {message}")
                log.error("%s", entry.failed[1])
                self._metrics.observe_model_load(entry.name, False, 0.0)
                return
            new.start_batching(*self._batching, self._on_batch)
            old, entry.loaded, entry.loaded_signature, entry.failed = entry.loaded, new, signature, None
            seconds = time.perf_counter() - started
            self._metrics.observe_model_load(entry.name, True, seconds)
            log.info("model repository: %s loaded (%s, version %s) in %.1f s", entry.name, new.predictor.model,
                     new.version, seconds)
            if old is not None:  # swapped: the old engine finishes its queue
                loop.create_task(old.close())

    async def _evict_for_one_more(self, keep):
        loaded = sorted((e for e in self.entries.values() if e.loaded is not None and e is not keep),
                        key=lambda e: e.last_used)
        while loaded and len(loaded) + 1 > self.max_loaded:
            victim = loaded.pop(0)
            log.info("model repository: %s unloaded (least recently used; --max_loaded %d)",
                     victim.name, self.max_loaded)
            self._metrics.observe_eviction(victim.name)
            await self._unload(victim)

    def _unload(self, entry):
        """Stop the entry's engine once its queue is done; returns the task closing it."""
        old, entry.loaded, entry.loaded_signature = entry.loaded, None, None
        return asyncio.get_running_loop().create_task(old.close())

    async def close(self):
        await asyncio.gather(*(self._unload(e) for e in self.entries.values() if e.loaded is not None))
