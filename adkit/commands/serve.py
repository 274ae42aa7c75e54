#!/usr/bin/env python
r"""Serve a model folder over HTTP for the inspection line (FastAPI + uvicorn).

    python serve.py --model_dir inference/patchcore_brick --host 127.0.0.1 --port 8866
    python serve.py --model_repository models/ --max_loaded 3     # every model folder in models/

Any folder infer.py takes: an export (Paddle Inference, ONNX Runtime with --backend onnxruntime,
int8) or a training checkpoint folder. Open http://127.0.0.1:8866/ for the web page; POST images
to /predict (see doc/serving.md). Concurrent requests are run in batches of up to --max_batch.
SIGTERM or Ctrl-C finishes the requests in flight, then exits; SIGHUP or POST /reload loads the
model again (or another folder inside --model_root) without dropping a request.
"""
import os
import signal
import sys

from adkit.core.errors import UserError, exit_on_user_error
from adkit.core.runtime import cpu_threads_from_argv, setup_logging, tune_process
from adkit.commands.engine_options import add_engine_options, predictor_options


def parse_args(argv):
    from adkit.options.config import HelpFormatter, OneLineParser

    parser = OneLineParser(description=__doc__, formatter_class=HelpFormatter)
    served = parser.add_mutually_exclusive_group(required=True)
    served.add_argument("--model_dir",
                        help="folder written by export_model.py, or a training folder (<output_dir>/<model>/<cls>)")
    served.add_argument("--model_repository",
                        help="serve every model folder inside this one at /models/{name}/predict; folders "
                             "added, replaced or removed are picked up without a restart")
    parser.add_argument("--max_loaded", type=int, default=4,
                        help="with --model_repository: engines kept loaded at most (the least recently "
                             "used is unloaded to load another)")
    parser.add_argument("--model_root", default=None,
                        help="POST /reload loads only folders inside this one (symlinks and .. resolved; "
                             "others get 403); default: the folder that holds --model_dir")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (0.0.0.0: every interface; then set --api_key)")
    parser.add_argument("--port", type=int, default=8866, help="TCP port")
    add_engine_options(parser)
    parser.add_argument("--max_batch", type=int, default=8, help="images run together at most")
    parser.add_argument("--max_wait_ms", type=float, default=5.0,
                        help="how long the first image of a batch waits for others to join")
    parser.add_argument("--max_queue", type=int, default=64,
                        help="images waiting at most; beyond it requests get 503 with Retry-After")
    parser.add_argument("--max_bytes", type=int, default=64 * 1024 * 1024,
                        help="largest image file accepted, in bytes (413 beyond)")
    parser.add_argument("--max_pixels", type=int, default=40_000_000,
                        help="largest image accepted, width x height from its header (413 beyond)")
    parser.add_argument("--api_key", default=os.environ.get("ADKIT_API_KEY"),
                        help="require this key in the X-API-Key header of /predict and /reload "
                             "(default: $ADKIT_API_KEY; none: no key)")
    parser.add_argument("--audit_log", default=None,
                        help="CSV file to append one row per decision to (time, request and part id, "
                             "score, label, threshold, model version)")
    parser.add_argument("--review_db", default=None,
                        help="SQLite file for the inspectors' reviews (POST /models/{name}/review); "
                             "created if absent, kept across restarts")
    parser.add_argument("--keep_images", default=None,
                        help="with --review_db: save each reviewed image in this folder (what "
                             "main.py --mode update learns from)")
    parser.add_argument("--keep_images_mb", type=float, default=1024.0,
                        help="--keep_images holds at most this many MB; the oldest images are removed first")
    parser.add_argument("--webhook", default=None,
                        help="post each verdict as JSON to this URL (from a background queue with retries; "
                             "the answer never waits for it)")
    parser.add_argument("--webhook_queue", type=int, default=1000,
                        help="verdicts waiting for --webhook at most; beyond it they are dropped (and "
                             "counted in /metrics)")
    parser.add_argument("--grace_seconds", type=float, default=30.0,
                        help="on SIGTERM, how long requests in flight may take to finish")
    parser.add_argument("--access_log", action="store_true", help="log every request (uvicorn's access log)")
    parser.add_argument("--verbose", action="store_true", help="show Paddle's own C++ messages")
    args = parser.parse_args(argv)
    for name in ("max_batch", "max_queue", "max_bytes", "max_pixels", "max_loaded", "webhook_queue"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.max_wait_ms < 0:
        raise UserError(f"--max_wait_ms must be >= 0, got {args.max_wait_ms}")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be 0-65535, got {args.port}")
    if args.api_key == "":
        raise UserError("--api_key is empty (give a key, or leave it out for no key)")
    if args.model_root is not None and not os.path.isdir(args.model_root):
        raise UserError(f"--model_root {args.model_root}: not a folder")
    if args.webhook:
        from adkit.deploy.serving.webhook import check_webhook_url

        refusal = check_webhook_url(args.webhook)
        if refusal:
            raise UserError(refusal)
    if args.keep_images and not args.review_db:
        raise UserError("--keep_images needs --review_db (images are kept when they are reviewed)")
    if args.keep_images_mb <= 0:
        raise UserError(f"--keep_images_mb must be > 0, got {args.keep_images_mb}")
    if args.model_repository is not None and not os.path.isdir(args.model_repository):
        raise UserError(f"--model_repository {args.model_repository}: not a folder (expected a folder "
                        "holding one folder per model)")
    return args


def check_address(host, port):
    """UserError unless this process could listen on host:port (as uvicorn will: SO_REUSEADDR)."""
    import socket

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as err:
        raise UserError(f"--host {host} --port {port}: cannot listen there ({err.strerror or err}); "
                        "choose another --port, or stop what uses it") from None


@exit_on_user_error
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    tune_process(cpu_threads_from_argv(argv), verbose="--verbose" in argv)
    setup_logging()
    args = parse_args(argv)
    try:
        import uvicorn

        from adkit.deploy.serving.app import ServiceSettings, create_app
    except ImportError as err:
        raise UserError(f"serve.py needs FastAPI and uvicorn ({err.name} is missing): "
                        "pip install -r requirements.txt") from None
    import logging

    from adkit.deploy.serving.model_slot import LoadedModel

    log = logging.getLogger("adkit")
    check_address(args.host, args.port)  # before the model loads: a taken port is one line, at once
    if args.audit_log:
        from adkit.deploy.serving.audit import check_audit_file

        check_audit_file(args.audit_log)
    if args.review_db:
        from adkit.deploy.serving.reviews import ReviewStore

        ReviewStore(args.review_db)  # a file that is not a review database: one line before the model loads
    options = predictor_options(args, args.max_batch)
    # a --model_dir that does not load: one line, no server; a repository's models load when asked for
    model = LoadedModel(args.model_dir, options) if args.model_dir else None
    settings = ServiceSettings(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                               max_queue=args.max_queue, max_bytes=args.max_bytes,
                               max_pixels=args.max_pixels, api_key=args.api_key,
                               audit_log=args.audit_log, predictor_options=options,
                               model_root=args.model_root, model_repository=args.model_repository,
                               max_loaded=args.max_loaded, review_db=args.review_db,
                               keep_images=args.keep_images, keep_images_mb=args.keep_images_mb,
                               webhook=args.webhook, webhook_queue=args.webhook_queue)
    app = create_app(model, settings)
    if model is None:
        log.info("serving the models of %s (at most %d loaded) on http://%s:%d/ (batches of up to %d)",
                 args.model_repository, args.max_loaded, args.host, args.port, args.max_batch)
    else:
        described = model.describe()
        log.info("serving %s (%s, version %s) on http://%s:%d/ (batches of up to %d)", args.model_dir,
                 described["model"], described["version"], args.host, args.port, args.max_batch)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_config=None, log_level="warning",
                            access_log=args.access_log, timeout_graceful_shutdown=args.grace_seconds)
    if args.access_log:
        logging.getLogger("uvicorn.access").setLevel(logging.INFO)
    # uvicorn re-raises a SIGTERM it handled once it has drained; a no-op handler here makes
    # that the end of a clean stop (exit code 0) instead of death by the signal.
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.Server(config).run()  # a taken port: uvicorn's one error line, exit code 1
    log.info("stopped")


if __name__ == "__main__":
    main()
