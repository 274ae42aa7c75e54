"""The FastAPI application of serve.py: routes, limits, the API key and the answer's JSON.

    POST /predict   an image (multipart field "file", a raw body, or JSON {"image": base64})
                    -> score, label, threshold, defect regions, model, file name, timing
                    [, overlay, map]
    GET  /          the web page          GET /health  alive          GET /ready  model loaded
    GET  /info      the model served      GET /metrics Prometheus     POST /reload  swap models
    GET  /models    the models served     POST /models/{name}/predict  as /predict, on that model
    POST /models/{name}/review   an inspector's verdict on an answer (--review_db; reviews.py)
    GET  /models/{name}/reviews  the stored reviews (JSON, or ?format=csv)

With --model_dir one model is served (named after its folder, also at /models/{name}/...);
with --model_repository every folder of the repository (adkit.deploy.serving.repository), and
the single-model routes /predict, /info and /reload answer 404 with where to go instead.

``Service`` holds what the routes share (settings, model slot or repository, metrics, audit log); the routes
are three routers (``page_routes``, ``admin_routes``, ``prediction_routes``) that find it on
``request.app.state.service``; ``create_app`` puts them together behind the ``_Guard`` middleware.
"""
import asyncio
import base64
import binascii
import hmac
import logging
import os
import signal
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse

from adkit.core.errors import UserError
from adkit.deploy.serving.audit import AuditLog
from adkit.deploy.serving.batcher import BatcherClosed, QueueFull
from adkit.deploy.serving.decode import TooLarge, decode_request_image
from adkit.deploy.serving.metrics import ServiceMetrics
from adkit.deploy.serving.model_slot import ModelRoot, ModelSlot

log = logging.getLogger("adkit")
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "page.html")
KEY_HEADER = "X-API-Key"
PART_HEADER = "X-Part-Id"
FILE_NAME_HEADER = "X-File-Name"
REQUEST_ID_HEADER = "X-Request-Id"
BODY_OVERHEAD = 64 * 1024  # form fields and JSON around the image bytes
WEBHOOK_DRAIN_SECONDS = 5.0  # on stopping, how long queued verdicts may still be posted


@dataclass
class ServiceSettings:
    max_batch: int = 8
    max_wait_ms: float = 5.0
    max_queue: int = 64
    max_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 40_000_000
    api_key: str | None = None
    audit_log: str | None = None
    predictor_options: dict = field(default_factory=dict)  # Predictor(**) for reloads too
    model_root: str | None = None  # /reload loads only folders inside it (None: the first model's parent)
    model_repository: str | None = None  # serve every model folder inside it (instead of one model)
    max_loaded: int = 4  # engines loaded at once from the repository
    review_db: str | None = None  # SQLite file of the inspectors' reviews (None: reviews off)
    keep_images: str | None = None  # folder the reviewed images are saved in
    keep_images_mb: float = 1024.0  # its size at most (oldest images removed first)
    webhook: str | None = None  # URL each verdict is posted to (webhook.py)
    webhook_queue: int = 1000  # verdicts waiting for it at most (more are dropped and counted)

    def max_body(self):
        """Request bytes allowed: the image as base64 (4/3 of it) plus the fields around it."""
        return self.max_bytes * 4 // 3 + 4 + BODY_OVERHEAD


class _Refused(Exception):
    def __init__(self, status, message, headers=None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


async def _refused(_request, err):
    return JSONResponse({"error": err.message}, status_code=err.status, headers=err.headers)


def create_app(model, settings):
    """``model``: the LoadedModel to serve first (loaded before the server starts, so a folder
    that does not load is one error line, not a server that never gets ready); None with
    ``settings.model_repository``."""
    service = Service(model, settings)
    app = FastAPI(title="PaddleAD anomaly detection service", lifespan=_lifespan,
                  docs_url="/docs", redoc_url=None)
    app.state.service = service
    app.add_middleware(_Guard, max_body=settings.max_body(), metrics=service.metrics)
    app.add_exception_handler(_Refused, _refused)
    for routes in (page_routes, admin_routes, prediction_routes):
        app.include_router(routes)
    return app


class Service:
    """What the routes share: the settings, the metrics, the folders /reload may load and,
    while the server runs, the model slot and the audit log."""

    def __init__(self, model, settings):
        self.settings = settings
        self.metrics = ServiceMetrics(settings.max_batch)
        if model is not None:
            self.model_root = ModelRoot(settings.model_root or os.path.dirname(model.model_dir), model.model_dir)
            self.single_name = os.path.basename(os.path.normpath(model.model_dir))
        self.first_model = model
        self.slot = None
        self.repository = None
        self.audit = None
        self.reviews = self.kept_images = self.recent = None
        self.webhook = None
        self.draining = False

    def start(self):
        """Inside the server's event loop: the batcher's queue and the slot's lock belong to it."""
        settings = self.settings
        batching = (settings.max_batch, settings.max_wait_ms / 1000.0, settings.max_queue)
        if settings.model_repository:
            from adkit.deploy.serving.repository import ModelRepository

            self.repository = ModelRepository(settings.model_repository, settings.max_loaded,
                                              settings.predictor_options, batching, self.metrics.observe_batch,
                                              self.metrics)
            self.metrics.queue_depth = lambda: sum(e.loaded.batcher.depth() for e in self.repository.entries.values()
                                                   if e.loaded is not None)
            self.metrics.models_loaded = self.repository.loaded_count
        else:
            self.slot = ModelSlot(self.first_model, batching, self.metrics.observe_batch)
            self.metrics.queue_depth = lambda: self.slot.current.batcher.depth()
        self.audit = AuditLog(settings.audit_log) if settings.audit_log else None
        if settings.review_db:
            from adkit.deploy.serving.reviews import KeptImages, RecentAnswers, ReviewStore

            self.reviews = ReviewStore(settings.review_db)
            self.recent = RecentAnswers(keep_bytes=bool(settings.keep_images))
            if settings.keep_images:
                self.kept_images = KeptImages(settings.keep_images, settings.keep_images_mb)
        if settings.webhook:
            from adkit.deploy.serving.webhook import Webhook

            self.webhook = Webhook(settings.webhook, self.metrics, settings.webhook_queue)

    async def stop(self):
        self.draining = True
        # the server has finished its requests; the queues are empty
        await (self.repository.close() if self.repository else self.slot.close())
        if self.audit:
            self.audit.close()
        if self.webhook:
            await asyncio.to_thread(self.webhook.close, WEBHOOK_DRAIN_SECONDS)

    def require_single_model(self, route):
        if self.repository is not None:
            raise _Refused(404, f"{route}: this service serves --model_repository "
                                f"{self.repository.root}; use GET /models and /models/{{name}}/...")

    async def model(self, name):
        """The LoadedModel that answers for ``name`` (None: the --model_dir model)."""
        if self.repository is None:
            if name is not None and name != self.single_name:
                raise _Refused(404, f"no model named {name!r}: this service serves {self.single_name!r} "
                                    "(GET /models)")
            return self.slot.current
        from adkit.deploy.serving.repository import ModelUnavailable, UnknownModel

        try:
            return await self.repository.model(name)
        except UnknownModel:
            raise _Refused(404, f"no model named {name!r} in --model_repository {self.repository.root} "
                                "(GET /models lists them)") from None
        except ModelUnavailable as err:
            raise _Refused(503, str(err), {"Retry-After": "5"}) from None

    def require_known(self, name):
        known = name in self.repository.entries if self.repository is not None else name == self.single_name
        if not known:
            raise _Refused(404, f"no model named {name!r} (GET /models lists them)")

    def listing(self):
        if self.repository is not None:
            return self.repository.listing()
        from adkit.deploy.serving.repository import version_number

        current = self.slot.current.describe()
        return [{"name": self.single_name, "model": current["model"], "version": current["version"],
                 "version_number": version_number(current["model_dir"]), "threshold": current["threshold"],
                 "state": "loaded"}]

    def require_key(self, request):
        if self.settings.api_key is None:
            return
        given = request.headers.get(KEY_HEADER, "")
        if not hmac.compare_digest(given.encode(), self.settings.api_key.encode()):
            raise _Refused(401, f"missing or wrong {KEY_HEADER} header")

    def require_inside_root(self, model_dir):
        """A reload request names folders on the server's disk: only those under --model_root."""
        refusal = self.model_root.refusal(model_dir)
        if refusal:
            log.warning("reload refused: %s", refusal)
            raise _Refused(403, refusal)

    async def reload(self, model_dir):
        """Swap in ``model_dir`` (None: the served folder again); a failure keeps the old model."""
        slot = self.slot
        target = model_dir or slot.current.model_dir
        try:
            new = await slot.swap(target, self.settings.predictor_options)
        except Exception as err:  # the old model keeps serving
            self.metrics.observe_reload(False)
            message = str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
            log.error("reload of %s failed, still serving %s: %s", target, slot.current.model_dir, message)
            return JSONResponse({"error": f"reload failed: {message}",
                                 "serving": slot.current.describe()}, status_code=422)
        self.metrics.observe_reload(True)
        return {"reloaded": True, **new.describe()}

    async def record(self, request_id, answer, data):
        """One row of --audit_log for an answered /predict; the answer (and with --keep_images
        its image) kept for a review of it."""
        self.metrics.observe_prediction(answer["model_name"], answer["label"])
        if self.webhook is not None:
            self.webhook.post({**answer, "threshold": answer["threshold"]["value"]})
        if self.recent is not None:
            self.recent.add(request_id, {k: answer[k] for k in ("model_name", "score", "label", "model",
                                                                 "model_version", "file_name", "part_id")}
                            | {"threshold": answer["threshold"]["value"]}, data)
        if self.audit:
            await asyncio.to_thread(self.audit.record, request_id, answer["file_name"], answer["part_id"],
                                    answer["score"], answer["label"], answer["threshold"]["value"],
                                    answer["model_name"], answer["model"], answer["model_version"])


@asynccontextmanager
async def _lifespan(app):
    service = app.state.service
    service.start()
    _reload_on_sighup(service)
    yield
    await service.stop()


def _reload_on_sighup(service):
    """SIGHUP: load the served folder again (its files replaced in place)."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(service.reload(None)))
    except (NotImplementedError, RuntimeError, AttributeError, ValueError):
        pass  # no SIGHUP (Windows) or not the main thread: POST /reload still works


def _service(request):
    return request.app.state.service


page_routes = APIRouter()


@page_routes.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page():
    with open(PAGE, encoding="utf-8") as f:
        return HTMLResponse(f.read())


admin_routes = APIRouter()  # for the orchestration and the line's scripts


@admin_routes.get("/health")
async def health():
    return {"status": "alive"}


@admin_routes.get("/ready")
async def ready(request: Request):
    service = _service(request)
    if service.draining:
        return JSONResponse({"ready": False, "reason": "shutting down"}, status_code=503)
    if service.repository is not None:  # ready to load whichever model is asked for
        return {"ready": True, "model_repository": service.repository.root,
                "models": len(service.repository.entries), "loaded": service.repository.loaded_count()}
    if not service.slot.current.alive():
        return JSONResponse({"ready": False, "reason": "the engine process stopped; restart "
                             "the service or POST /reload"}, status_code=503)
    return {"ready": True, **service.slot.current.describe()}


@admin_routes.get("/info")
async def info(request: Request):
    service = _service(request)
    service.require_single_model("GET /info")
    settings = service.settings
    return {**service.slot.current.describe(), "api_key_required": settings.api_key is not None,
            "max_bytes": settings.max_bytes, "max_pixels": settings.max_pixels,
            "max_batch": settings.max_batch}


@admin_routes.get("/metrics", response_class=PlainTextResponse)
async def prometheus(request: Request):
    return PlainTextResponse(_service(request).metrics.text(), media_type="text/plain; version=0.0.4")


@admin_routes.post("/reload")
async def reload(request: Request):
    service = _service(request)
    service.require_key(request)
    service.require_single_model("POST /reload")
    model_dir = await _requested_folder(request)
    if model_dir:
        service.require_inside_root(model_dir)
    return await service.reload(model_dir)


async def _requested_folder(request):
    """The "model_dir" of a /reload body, or None (no body, or none named: the served folder)."""
    body = await request.body()
    if not body:
        return None
    named = _json(body)
    if not isinstance(named, dict) or not isinstance(named.get("model_dir"), (str, type(None))):
        raise _Refused(400, 'expected a JSON object such as {"model_dir": "..."}')
    return named.get("model_dir")


prediction_routes = APIRouter()


@prediction_routes.get("/models")
async def models(request: Request):
    """Every model served: name, method, version, threshold, state (loaded or not)."""
    service = _service(request)
    return {"models": service.listing(), "api_key_required": service.settings.api_key is not None,
            "reviews": service.reviews is not None}


@prediction_routes.post("/predict")
async def predict(request: Request):
    service = _service(request)
    service.require_single_model("POST /predict")
    return await _predict(request, service, None)


@prediction_routes.post("/models/{model_name}/predict")
async def predict_with(request: Request, model_name: str):
    return await _predict(request, _service(request), model_name)


async def _predict(request, service, model_name):
    service.require_key(request)
    started = time.perf_counter()
    request_id = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex[:16]
    await service.model(model_name)  # an unknown model is refused before the body is read
    data, name, options = await _read_image(request)
    served, image, (model_map, score, batch_size), decoded = await _decoded_and_scored(service, model_name,
                                                                                       data, name)
    scored = time.perf_counter()
    answer = await asyncio.to_thread(_answer, served, image, model_map, score, options)
    done = time.perf_counter()
    answer.update(model_name=model_name or service.single_name, request_id=request_id, file_name=options["file_name"], part_id=options["part_id"],
                  batch_size=batch_size,
                  timing_ms={"decode": round((decoded - started) * 1000, 3),
                             "queue_and_engine": round((scored - decoded) * 1000, 3),
                             "postprocess": round((done - scored) * 1000, 3),
                             "total": round((done - started) * 1000, 3)})
    await service.record(request_id, answer, data)
    return JSONResponse(answer, headers={REQUEST_ID_HEADER: request_id})


@prediction_routes.post("/models/{model_name}/review")
async def review(request: Request, model_name: str):
    """{"request_id", "verdict", "note"}: an inspector's verdict on one of the recent answers."""
    from adkit.deploy.serving.reviews import NOTE_CHARS, RECENT_ANSWERS, VERDICTS

    service = _service(request)
    service.require_key(request)
    service.require_known(model_name)
    if service.reviews is None:
        raise _Refused(404, "reviews are off: start serve.py with --review_db FILE")
    body = _json(await request.body())
    expected = ('expected a JSON object {"request_id": "...", "verdict": "' + '|'.join(VERDICTS)
                + '", "note": "..."}')
    if not isinstance(body, dict) or not isinstance(body.get("request_id"), str) or not body["request_id"]:
        raise _Refused(422, expected)
    verdict, note = body.get("verdict"), body.get("note", "")
    if verdict not in VERDICTS:
        raise _Refused(422, f"verdict {verdict!r}: {expected}")
    if not isinstance(note, str) or len(note) > NOTE_CHARS:
        raise _Refused(422, f"note: expected text of at most {NOTE_CHARS} characters")
    recent = service.recent.get(body["request_id"])
    if recent is None or recent[0]["model_name"] != model_name:
        raise _Refused(404, f"request_id {body['request_id']!r}: not among the last {RECENT_ANSWERS} answers "
                            f"of model {model_name!r} (reviews name a recent answer of this server run)")
    answer, data = recent
    reviewed_label, truth = VERDICTS[verdict]
    if answer["label"] and answer["label"] != reviewed_label:
        raise _Refused(422, f"verdict {verdict}: the model answered {answer['label']!r} for this request, "
                            f"the verdict is for a {reviewed_label!r} answer")
    image = ""
    if service.kept_images is not None and data:
        image = await asyncio.to_thread(service.kept_images.save, model_name, body["request_id"], data)
    row = {**answer, "request_id": body["request_id"], "verdict": verdict, "truth": truth, "note": note,
           "image": image}
    review_id = await asyncio.to_thread(service.reviews.add, row)
    service.metrics.count("adkit_reviews_total", "Reviews stored, by model name and verdict.",
                          model=model_name, verdict=verdict)
    return JSONResponse({"review_id": review_id, **row}, status_code=201)


@prediction_routes.get("/models/{model_name}/reviews")
async def reviews(request: Request, model_name: str, format: str = "json"):
    """The reviews of a model, oldest first (?format=csv: the export main.py --mode update reads)."""
    from adkit.deploy.serving.reviews import reviews_csv

    service = _service(request)
    service.require_key(request)
    if service.reviews is None:
        raise _Refused(404, "reviews are off: start serve.py with --review_db FILE")
    rows = await asyncio.to_thread(service.reviews.rows, model_name)
    if format == "csv":
        return PlainTextResponse(reviews_csv(rows), media_type="text/csv")
    return {"reviews": rows}


async def _decoded_and_scored(service, model_name, data, name):
    """(the model that scored it, image, (map, score, batch size), when decoding ended) of one
    request's bytes, on the model served when it was decoded."""
    settings = service.settings
    for _ in range(3):  # a reload or an eviction may close the batcher between reading it and submitting
        served = await service.model(model_name)
        try:  # decoding and resizing in one trip off the event loop
            image, tensor, decoded = await asyncio.to_thread(_decode_and_preprocess, served, data, name,
                                                             settings)
        except TooLarge as err:
            raise _Refused(413, str(err)) from None
        except UserError as err:
            raise _Refused(400, str(err)) from None
        try:
            return served, image, await _scored(served, tensor, image.shape[:2]), decoded
        except BatcherClosed:
            continue
        except QueueFull:
            raise _Refused(503, f"busy: {settings.max_queue} images already waiting (--max_queue); "
                           "retry shortly", {"Retry-After": "1"}) from None
    raise _Refused(503, "the model is being swapped; retry", {"Retry-After": "1"})


def _json(body):
    import json

    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise _Refused(400, "the body is not valid JSON") from None


def _flag(value):
    return str(value).strip().lower() in ("1", "true", "yes", "on")


async def _read_image(request):
    """(image bytes, a name for errors, options) from a multipart upload (field "file" or
    "image"), a JSON body {"image": base64, ...} or the raw body. Options: overlay, map
    (return them as base64 PNG) and part_id, from the query, the form / JSON, or X-Part-Id;
    file_name (the audit log's and the answer's) likewise or X-File-Name, else the upload's
    own file name."""
    query = request.query_params
    options = {"overlay": _flag(query.get("overlay", "")), "map": _flag(query.get("map", "")),
               "part_id": query.get("part_id") or request.headers.get(PART_HEADER, ""),
               "file_name": query.get("file_name") or request.headers.get(FILE_NAME_HEADER, ""),
               "overlay_max_side": query.get("overlay_max_side")}
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        form = await request.form()
        upload = form.get("file") or form.get("image")
        if upload is None or isinstance(upload, str):
            raise _Refused(400, 'multipart upload: expected the image in a file field named "file"')
        for key in ("overlay", "map"):
            options[key] = options[key] or _flag(form.get(key, ""))
        options["part_id"] = options["part_id"] or str(form.get("part_id", ""))
        options["file_name"] = options["file_name"] or str(form.get("file_name", "")) or upload.filename or ""
        options["overlay_max_side"] = options["overlay_max_side"] or form.get("overlay_max_side")
        return await upload.read(), f"upload {upload.filename or 'file'}", _checked(options)
    if kind == "application/json":
        body = _json(await request.body())
        if not isinstance(body, dict) or not isinstance(body.get("image"), str):
            raise _Refused(400, 'JSON body: expected {"image": "<base64 of the image file>"}')
        try:
            data = base64.b64decode(body["image"], validate=True)
        except (binascii.Error, ValueError):
            raise _Refused(400, 'JSON body: "image" is not valid base64') from None
        for key in ("overlay", "map"):
            options[key] = options[key] or _flag(body.get(key, ""))
        options["part_id"] = options["part_id"] or str(body.get("part_id", ""))
        options["file_name"] = options["file_name"] or str(body.get("file_name", ""))
        options["overlay_max_side"] = options["overlay_max_side"] or body.get("overlay_max_side")
        return data, "JSON image", _checked(options)
    return await request.body(), "request body", _checked(options)


def _checked(options):
    """overlay_max_side: None (the photo's size) or a whole number of pixels >= 16."""
    side = options["overlay_max_side"]
    if side is not None and side != "":
        try:
            side = int(side)
        except (TypeError, ValueError):
            side = 0
        if side < 16:
            raise _Refused(400, f"overlay_max_side: expected a whole number of pixels >= 16, got "
                                f"{options['overlay_max_side']!r}")
    options["overlay_max_side"] = side or None
    return options


async def _scored(served, inputs, image_hw):
    """(map, score, largest batch it ran in) of one image's ``preprocess``'d inputs: the image
    itself as one item of a micro-batch, or a tiled model's tiles in waves of at most
    --max_batch (a 20-megapixel photo's hundreds of tiles never fill the queue at once, and
    run in batches with other requests' tiles), stitched into a map at the photo's size."""
    if served.predictor.tiling is None:
        return await served.batcher.submit(inputs)
    boxes, tiles = inputs
    results, wave = [], served.batcher.max_batch
    for start in range(0, len(tiles), wave):
        results += await asyncio.gather(*(served.batcher.submit(tile) for tile in tiles[start:start + wave]))
    return await asyncio.to_thread(_stitched, served.predictor.tiling, image_hw, boxes, results)


def _stitched(tiling, image_hw, boxes, results):
    from adkit.core.tiling import stitch

    amap = stitch(tiling, image_hw, boxes, [tile_map for tile_map, _, _ in results])
    return amap, float(amap.max()), max(size for _, _, size in results)


def _decode_and_preprocess(served, data, name, settings):
    """(image, the model's input tensor, when decoding ended) of one request's bytes."""
    image = decode_request_image(data, name, settings.max_bytes, settings.max_pixels)
    decoded = time.perf_counter()
    return image, served.predictor.preprocess(image), decoded


def _answer(served, image, model_map, score, options):
    """The JSON answer for one image (off the event loop: resizing, regions and PNGs cost)."""
    from adkit.outputs.visualize import annotated_overlay, encode_png

    predictor = served.predictor
    result = predictor.prediction(model_map, score, image.shape[:2])
    threshold = predictor.threshold
    answer = {"score": result.score, "label": result.label, "threshold": threshold.as_dict(),
              "regions": result.regions, "image_size": {"width": image.shape[1], "height": image.shape[0]},
              "model": predictor.model, "model_version": served.version}
    if options["overlay"] or options["map"]:
        lo, hi = predictor.display_range(model_map[None])
        if options["overlay"]:
            shown, shown_map = _downscaled(image, result.map, options["overlay_max_side"])
            picture = annotated_overlay(shown, shown_map, (lo, hi), threshold.value, result.score,
                                        result.label)
            answer["overlay_png"] = base64.b64encode(encode_png(picture)).decode("ascii")
        if options["map"]:
            import numpy as np

            scaled = np.clip((result.map - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
            answer["map_png"] = base64.b64encode(encode_png((scaled * 255).round().astype(np.uint8))).decode("ascii")
            answer["map_range"] = [lo, hi]  # map_png's 0 and 255
    return answer


def _downscaled(image, amap, max_side):
    """(image, map) shrunk to at most ``max_side`` pixels on the longer side (None: as they
    are), for an overlay a page can show; the regions stay in the photo's pixels."""
    import cv2

    h, w = image.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return image, amap
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return (cv2.resize(image, size, interpolation=cv2.INTER_AREA),
            cv2.resize(amap, size, interpolation=cv2.INTER_AREA))


class _BodyTooLarge(Exception):
    pass


_ROUTES = ("/predict", "/reload", "/", "/health", "/ready", "/info", "/metrics", "/models")


def route_of(path):
    """The route a path is counted under in /metrics (a model's name is a label of its own)."""
    if path in _ROUTES:
        return path
    parts = path.split("/")
    if len(parts) == 4 and parts[1] == "models" and parts[3] in ("predict", "review", "reviews"):
        return "/models/{name}/" + parts[3]
    return "other"


class _Guard:
    """ASGI middleware in front of every route: refuses a request body over ``max_body``
    bytes (from Content-Length before reading, else while it streams in) with 413, answers
    uncaught errors with one JSON line instead of a traceback page, and counts every answer
    by path and status (with /predict's latency) for /metrics."""

    def __init__(self, app, max_body, metrics):
        self.app, self.max_body, self.metrics = app, max_body, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        path = scope.get("path", "")
        status = {"code": 500, "sent": False}

        async def send_counted(message):
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
            await send(message)

        received = 0

        async def receive_limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise _BodyTooLarge()
            return message

        length = dict(scope.get("headers", [])).get(b"content-length")
        known = route_of(path)
        self.metrics.started(known)
        try:
            if length is not None and length.isdigit() and int(length) > self.max_body:
                raise _BodyTooLarge()
            await self.app(scope, receive_limited, send_counted)
        except _BodyTooLarge:
            if not status["sent"]:
                await _send_json(send_counted, 413, f"request body over {self.max_body} bytes "
                                 "(--max_bytes, with room for base64 and form fields)")
        except Exception as err:
            log.exception("%s failed", path)
            if not status["sent"]:
                await _send_json(send_counted, 500, f"internal error: {type(err).__name__}: {err}")
        finally:
            self.metrics.observe_request(known, status["code"], time.perf_counter() - started)


async def _send_json(send, status, message):
    import json

    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
