"""serve.py as a real server on a free local port: the answers (three ways to send an image,
regions checked against scipy), micro-batching, the limits and bad inputs under load, the
API key, reload (POST and SIGHUP) and the folders it may load (--model_root), the audit log,
SIGTERM with requests in flight, and the web page in a real browser: Debian's Chromium,
headless, driven by selenium through Debian's chromedriver (`apt-get install chromium
chromium-driver`, as .ci/run does; without them that test fails and says so)."""
import base64
import concurrent.futures
import csv
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
from scipy import ndimage

from adkit.deploy.serving.app import ServiceSettings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "sample_data", "brick", "test")
GOOD = os.path.join(SAMPLE, "good", "000.png")
DEFECTS = sorted(os.path.join(SAMPLE, d, n) for d in ("scratch", "stain", "contamination")
                 for n in os.listdir(os.path.join(SAMPLE, d)))
KEY = "line-7-secret"

httpx = pytest.importorskip("httpx")  # in requirements-dev; the server itself needs fastapi


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """serve.py in a subprocess; ``url``; ``stop()`` sends SIGTERM and returns the exit code.
    ``model_dir``: served with --model_dir, or with --model_repository when ``repository``."""

    def __init__(self, model_dir, *options, key=KEY, own_group=False, repository=False):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, os.path.join(ROOT, "serve.py"),
                "--model_repository" if repository else "--model_dir", str(model_dir),
                "--port", str(self.port), "--cpu_threads", "1", *map(str, options)]
        if key:
            argv += ["--api_key", key]
        self.log = open(os.path.join(os.path.dirname(str(model_dir)), f"serve_{self.port}.log"), "w+")
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=own_group)
        self.headers = {"X-API-Key": key} if key else {}
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve.py exited {self.proc.returncode}: {self.output()}")
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("serve.py did not get ready: " + self.output())

    def output(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def post(self, path="/predict", timeout=60, **kwargs):
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return httpx.post(self.url + path, headers=headers, timeout=timeout, **kwargs)

    def upload(self, path, route="/predict", **kwargs):
        with open(path, "rb") as f:
            return self.post(route, files={"file": (os.path.basename(path), f.read(), "image/png")}, **kwargs)

    def metrics(self):
        return httpx.get(self.url + "/metrics", timeout=10).text

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.log.close()


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Two PaDiM exports of brick at 64 px (different training subsets: different models)."""
    from adkit.pipelines.train import train
    from adkit.options.config import resolve_config
    from adkit.commands.export import export

    root = tmp_path_factory.mktemp("serving")
    folders = []
    for name, seed in (("first", 0), ("second", 1)):
        out = root / f"out_{name}"
        train(resolve_config(["--model", "padim", "--mode", "train", "--data_dir",
                                   os.path.join(ROOT, "sample_data"), "--cls", "brick", "--image_size", "64",
                                   "--output_dir", str(out), "--seed", str(seed)]), "brick")
        folder = root / f"inference_{name}"
        export("padim", str(out / "padim" / "brick"), str(folder))
        folders.append(folder)
    return folders


@pytest.fixture(scope="module")
def server(exports, tmp_path_factory):
    audit = tmp_path_factory.mktemp("audit") / "decisions.csv"
    srv = Server(exports[0], "--max_batch", 8, "--max_wait_ms", 30, "--audit_log", audit)
    srv.audit = audit
    yield srv
    srv.stop()


def regions_by_scipy(amap, threshold):
    """Independent of adkit.evaluate.regions: scipy's 8-connected labels and find_objects."""
    labels, count = ndimage.label(amap >= threshold, structure=np.ones((3, 3)))
    out = []
    for k, box in enumerate(ndimage.find_objects(labels), 1):
        values = amap[labels == k]
        out.append({"x": box[1].start, "y": box[0].start, "width": box[1].stop - box[1].start,
                    "height": box[0].stop - box[0].start, "area": int(values.size),
                    "max": float(values.max()), "mean": float(values.astype(np.float64).mean())})
    return sorted(out, key=lambda r: (-r["max"], r["y"], r["x"]))


@pytest.mark.slow
def test_three_ways_to_send_an_image_give_the_predictors_answer(server, exports):
    from adkit import Predictor

    predictor = Predictor(str(exports[0]), cpu_threads=1)
    for path in [GOOD] + DEFECTS[:3]:
        expected = predictor.predict(path)
        data = open(path, "rb").read()
        answers = [server.upload(path),
                   server.post(content=data, headers={"Content-Type": "image/png"}),
                   server.post(json={"image": base64.b64encode(data).decode(), "part_id": "P-1"})]
        for response in answers:
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["score"] == pytest.approx(expected.score, rel=1e-5)
            assert body["label"] == expected.label
            assert body["threshold"]["value"] == expected.threshold
            assert body["model"] == "padim" and len(body["model_version"]) == 12
            assert body["image_size"] == {"width": 256, "height": 256}
            assert response.headers["X-Request-Id"] == body["request_id"]
            want = regions_by_scipy(expected.map, expected.threshold)
            assert [{k: r[k] for k in ("x", "y", "width", "height", "area")} for r in body["regions"]] == \
                [{k: r[k] for k in ("x", "y", "width", "height", "area")} for r in want]
            for got, ref in zip(body["regions"], want):
                assert got["max"] == pytest.approx(ref["max"], rel=1e-5)
                assert got["mean"] == pytest.approx(ref["mean"], rel=1e-5)
        assert answers[2].json()["part_id"] == "P-1"
    assert any(server.upload(p).json()["regions"] for p in DEFECTS), "no defect image gave a region"


@pytest.mark.slow
def test_overlay_and_map_come_back_as_pngs_of_the_image_size(server):
    import cv2

    body = server.upload(DEFECTS[0], params={"overlay": "true", "map": "1"}).json()
    overlay = cv2.imdecode(np.frombuffer(base64.b64decode(body["overlay_png"]), np.uint8), cv2.IMREAD_COLOR)
    amap = cv2.imdecode(np.frombuffer(base64.b64decode(body["map_png"]), np.uint8), cv2.IMREAD_UNCHANGED)
    assert amap.shape == (256, 256) and amap.dtype == np.uint8
    assert overlay.shape[0] > 256 and overlay.shape[1] > 256  # the image plus header and colour bar
    lo, hi = body["map_range"]
    assert lo < hi
    plain = server.upload(DEFECTS[0]).json()
    assert "overlay_png" not in plain and "map_png" not in plain


@pytest.mark.slow
def test_concurrent_requests_run_in_batches(server):
    before = batches(server.metrics())
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda p: server.upload(p), (DEFECTS * 4)[:32]))
    assert [a.status_code for a in answers] == [200] * 32
    after = batches(server.metrics())
    ran = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    assert sum(size * n for size, n in ran.items()) == 32
    assert max(size for size, n in ran.items() if n) > 1, ran
    assert max(a.json()["batch_size"] for a in answers) > 1


def batches(text):
    out = {}
    for line in text.splitlines():
        if line.startswith("adkit_batches_total{"):
            size = int(line.split('size="')[1].split('"')[0])
            out[size] = int(line.rsplit(" ", 1)[1])
    return out


def png_declaring(width, height):
    """A PNG of a few KB whose header declares width x height (its pixel data cut short)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 2_000_000, 9)) + chunk(b"IEND", b""))


@pytest.mark.slow
def test_bad_requests_get_their_status_while_a_load_keeps_succeeding(server):
    good = open(GOOD, "rb").read()
    bad = [  # (what, request kwargs, status, words the error must contain)
        ("empty body", dict(content=b""), 400, "empty"),
        ("not an image", dict(content=b"hello, not a picture"), 400, "not an image"),
        ("truncated PNG", dict(content=good[: len(good) // 2]), 400, "truncated PNG"),
        ("30000x30000 PNG of a few KB", dict(content=png_declaring(30000, 30000)), 413, "--max_pixels"),
        ("8000x6000 PNG header", dict(content=png_declaring(8000, 6000)), 413, "8000x6000"),
        ("body over the limit", dict(content=b"\0" * (ServiceSettings().max_body() + 1)), 413, "--max_bytes"),
        ("bad base64", dict(json={"image": "%%%"}), 400, "base64"),
        ("JSON without image", dict(json={"picture": "x"}), 400, '"image"'),
        ("form without file", dict(data={"part_id": "x"}, files={"other": ("a.txt", b"abc")}), 400, '"file"'),
        ("no API key", dict(content=good, headers={"X-API-Key": ""}), 401, "X-API-Key"),
        ("wrong API key", dict(content=good, headers={"X-API-Key": "guess"}), 401, "X-API-Key"),
    ]
    assert len(png_declaring(30000, 30000)) < 10_000
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        load = [pool.submit(server.upload, path) for path in (DEFECTS + [GOOD]) * 3]
        for what, kwargs, status, words in bad:
            response = server.post(**kwargs)
            assert response.status_code == status, (what, response.text)
            message = response.json()["error"]
            assert words in message and "\n" not in message, (what, message)
        codes = [f.result().status_code for f in load]
    assert codes == [200] * len(load)
    assert server.upload(GOOD).status_code == 200  # still serving
    assert httpx.get(server.url + "/health").json() == {"status": "alive"}
    assert "Traceback" not in server.output()


@pytest.mark.slow
def test_health_ready_info_and_metrics(server):
    ready = httpx.get(server.url + "/ready").json()
    assert ready["ready"] is True and ready["model"] == "padim"
    info = httpx.get(server.url + "/info").json()
    assert info["api_key_required"] is True and info["max_batch"] == 8
    server.post(content=b"")
    text = server.metrics()
    assert 'adkit_requests_total{path="/predict",status="400"}' in text
    assert 'adkit_predict_latency_seconds_bucket{le="+Inf"}' in text
    assert "adkit_queue_depth 0" in text and in_flight(text) == 0
    count = int(next(l for l in text.splitlines() if l.startswith("adkit_predict_latency_seconds_count")).split()[1])
    answered = sum(int(l.rsplit(" ", 1)[1]) for l in text.splitlines()
                   if l.startswith('adkit_requests_total{path="/predict"'))
    assert count == answered


@pytest.mark.slow
def test_the_audit_log_has_one_row_per_decision(server):
    """Each row names the image (the upload's file name, or the one the client gives), the
    part, the decision and the model: two 000.png from different folders stay apart."""
    sent = []
    for k, path in enumerate(DEFECTS[:3]):
        name = os.path.relpath(path, SAMPLE)  # scratch/000.png, ...
        with open(path, "rb") as f:
            response = server.post(files={"file": (name, f.read(), "image/png")}, headers={"X-Part-Id": f"part-{k}"})
        sent.append((response, name, f"part-{k}"))
    data = open(GOOD, "rb").read()
    raw = server.post(content=data, headers={"X-File-Name": "line2/good/000.png", "X-Part-Id": "B-7"})
    sent.append((raw, "line2/good/000.png", "B-7"))
    as_json = server.post(json={"image": base64.b64encode(data).decode(), "file_name": "line3/000.png"})
    sent.append((as_json, "line3/000.png", ""))
    with open(server.audit, newline="") as f:
        rows = {row["request_id"]: row for row in csv.DictReader(f)}
    for response, name, part in sent:
        body = response.json()
        row = rows[response.headers["X-Request-Id"]]
        assert row["file_name"] == name == body["file_name"]
        assert row["part_id"] == part and row["label"] == body["label"]
        assert float(row["score"]) == body["score"] and float(row["threshold"]) == body["threshold"]["value"]
        assert row["model_version"] == body["model_version"] and row["model"] == "padim"
        assert row["model_name"] == body["model_name"] == "inference_first"  # the folder's name
    assert len(rows) >= 5 + 4 * 3  # every 200 answer of the earlier tests too


@pytest.mark.slow
def test_an_audit_log_of_other_columns_is_refused_before_the_model_loads(exports, tmp_path):
    old = tmp_path / "decisions.csv"
    old.write_text("time,request_id,part_id,score,label,threshold,model,model_version\n"
                   "2026-01-01T00:00:00.000Z,abc,A-1,0.5,good,0.7,padim,1\n")
    before = old.read_bytes()
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "serve.py"), "--model_dir", str(exports[0]),
                           "--port", str(free_port()), "--audit_log", str(old)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: --audit_log {old}: its columns (time,request_id,part_id,score,label,threshold,model,"
        "model_version) are not this version's (time,request_id,file_name,part_id,score,label,threshold,"
        "model_name,model,model_version); name a new file (the old one is left as it is)"]
    assert old.read_bytes() == before


@pytest.mark.slow
def test_reload_swaps_models_and_a_bad_folder_keeps_the_old_one(exports, tmp_path):
    srv = Server(exports[0], "--max_wait_ms", 5)
    try:
        first = srv.upload(DEFECTS[0]).json()
        assert srv.post("/reload", json={"model_dir": str(exports[1])}, headers={"X-API-Key": ""}).status_code == 401
        with concurrent.futures.ThreadPoolExecutor(4) as pool:  # requests in flight during the swap
            load = [pool.submit(srv.upload, p) for p in DEFECTS * 2]
            reloaded = srv.post("/reload", json={"model_dir": str(exports[1])})
            codes = [f.result().status_code for f in load]
        assert codes == [200] * len(load)
        assert reloaded.status_code == 200, reloaded.text
        second = srv.upload(DEFECTS[0]).json()
        assert second["model_version"] == reloaded.json()["version"] != first["model_version"]
        assert second["score"] != first["score"]

        broken = exports[0].parent / "broken"  # inside --model_root (its default: the exports' folder)
        broken.mkdir()
        (broken / "deploy_config.json").write_text("{}")
        failed = srv.post("/reload", json={"model_dir": str(broken)})
        assert failed.status_code == 422 and "broken" in failed.json()["error"]
        after = srv.upload(DEFECTS[0]).json()
        assert after["model_version"] == second["model_version"] and after["score"] == second["score"]
        assert 'adkit_reloads_total{outcome="failed"} 1' in srv.metrics()
    finally:
        assert srv.stop() == 0


def outside_root(path, root):
    return f"{path} is outside --model_root {root}: the service loads only folders inside it"


@pytest.mark.slow
def test_reload_loads_only_folders_inside_the_model_root(exports, tmp_path):
    """--model_root models/: a folder elsewhere, "models/../elsewhere", a link inside models/ to
    elsewhere and models/ itself are refused with 403 and the model keeps answering; a folder
    inside models/ is loaded."""
    tmp_path = tmp_path.resolve()  # the paths in the refusals are resolved ones
    models, elsewhere = tmp_path / "models", tmp_path / "elsewhere"
    shutil.copytree(exports[0], models / "v1")
    shutil.copytree(exports[1], models / "v2")
    shutil.copytree(exports[1], elsewhere)
    (models / "link").symlink_to(elsewhere, target_is_directory=True)
    srv = Server(models / "v1", "--model_root", models)
    try:
        first = srv.upload(DEFECTS[0]).json()
        refused = [(str(elsewhere), outside_root(elsewhere, models)),
                   (f"{models}/../elsewhere", outside_root(f"{models}/../elsewhere", models)),
                   (str(models / "link"), outside_root(f"{models / 'link'} (that is {elsewhere})", models)),
                   (str(models), outside_root(models, models))]
        for folder, line in refused:
            answer = srv.post("/reload", json={"model_dir": folder})
            assert (answer.status_code, answer.json()) == (403, {"error": line}), folder
            still = srv.upload(DEFECTS[0])
            assert still.status_code == 200
            assert (still.json()["model_version"], still.json()["score"]) == \
                (first["model_version"], first["score"]), folder
        assert srv.post("/reload", json={"model_dir": 5}).status_code == 400
        text = srv.metrics()
        assert 'adkit_requests_total{path="/reload",status="403"} 4' in text
        assert 'adkit_reloads_total{outcome="failed"} 0' in text  # refused before loading anything

        reloaded = srv.post("/reload", json={"model_dir": str(models / "v2")})
        assert reloaded.status_code == 200, reloaded.text
        second = srv.upload(DEFECTS[0]).json()
        assert second["model_version"] == reloaded.json()["version"] != first["model_version"]
        assert second["score"] != first["score"]
        back = srv.post("/reload", json={"model_dir": str(models / "v1")})  # the first folder again
        assert back.status_code == 200 and back.json()["version"] == first["model_version"]
    finally:
        assert srv.stop() == 0


@pytest.mark.slow
def test_the_model_root_defaults_to_the_folder_holding_model_dir(server, exports, tmp_path):
    before = server.upload(DEFECTS[0]).json()
    answer = server.post("/reload", json={"model_dir": str(tmp_path)})
    assert (answer.status_code, answer.json()) == (403, {"error": outside_root(tmp_path, exports[0].parent)})
    after = server.upload(DEFECTS[0]).json()
    assert (after["model_version"], after["score"]) == (before["model_version"], before["score"])


def test_the_model_root_compares_resolved_paths(tmp_path):
    """ModelRoot alone: which folders a reload may name (no server)."""
    from adkit.deploy.serving.model_slot import ModelRoot

    root = tmp_path / "models"
    (root / "v1").mkdir(parents=True)
    (tmp_path / "models_old").mkdir()
    (root / "up").symlink_to("..", target_is_directory=True)
    allowed = ModelRoot(str(root), str(root / "v1"))
    for inside in (root / "v1", root / "v2", root / "v1" / ".." / "v2", root / "up" / "models" / "v2"):
        assert allowed.refusal(str(inside)) is None, inside
    for outside in (root, tmp_path / "models_old", root / ".." / "models_old", root / "up", tmp_path, "/",
                    f"{root}/v1\0"):
        assert "is outside --model_root" in allowed.refusal(str(outside)), outside
    assert ModelRoot(str(root), str(root)).refusal(str(root)) is None  # --model_dir itself, even as the root


@pytest.mark.slow
def test_sighup_loads_the_folder_again(exports, tmp_path):
    folder = tmp_path / "live"
    shutil.copytree(exports[0], folder)
    srv = Server(folder, key=None)
    try:
        before = srv.upload(DEFECTS[0]).json()
        for name in os.listdir(exports[1]):  # the line's deployment replaces the files in place
            shutil.copy(exports[1] / name, folder / name)
        srv.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 60
        while httpx.get(srv.url + "/info").json()["version"] == before["model_version"]:
            assert time.time() < deadline, srv.output()
            time.sleep(0.2)
        after = srv.upload(DEFECTS[0]).json()
        assert after["score"] != before["score"]
    finally:
        assert srv.stop() == 0


@pytest.mark.slow
@pytest.mark.parametrize("to_group", [False, True], ids=["to the server", "to its process group"])
def test_sigterm_finishes_the_requests_in_flight_then_exits(exports, tmp_path, to_group):
    """SIGTERM to the server, or to its whole process group as systemd's default stop sends it
    (then the engine's child process gets it too, and must keep working until the server is done)."""
    import cv2

    big = tmp_path / "big.png"  # slow enough to be in flight when the signal comes
    cv2.imwrite(str(big), cv2.resize(cv2.imread(DEFECTS[0]), (2048, 2048)))
    srv = Server(exports[0], "--max_batch", 2, key=None, own_group=to_group)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        load = [pool.submit(srv.upload, big, params={"overlay": "true"}) for _ in range(6)]
        deadline = time.time() + 60
        while in_flight(srv.metrics()) < 6:  # all six received, none answered yet
            assert time.time() < deadline and not any(f.done() for f in load), srv.output()
            time.sleep(0.02)
        if to_group:
            os.killpg(srv.proc.pid, signal.SIGTERM)
        else:
            srv.proc.send_signal(signal.SIGTERM)
        codes = [f.result().status_code for f in load]
    srv.proc.wait(60)
    output = srv.output()
    assert srv.stop() == 0
    assert codes == [200] * 6, output
    assert "Traceback" not in output and "SIGTERM" not in output, output
    with pytest.raises(httpx.HTTPError):
        httpx.get(srv.url + "/health", timeout=2)


def in_flight(metrics_text):
    return int(next(l for l in metrics_text.splitlines() if l.startswith("adkit_requests_in_flight ")).split()[1])


@pytest.mark.slow
def test_a_full_queue_answers_503_with_retry_after(exports):
    srv = Server(exports[0], "--max_batch", 1, "--max_queue", 1, "--max_wait_ms", 0, key=None)
    try:
        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            answers = list(pool.map(lambda _: srv.upload(DEFECTS[0]), range(48)))
        codes = sorted({a.status_code for a in answers})
        assert codes == [200, 503], codes
        for a in answers:
            if a.status_code == 503:
                assert a.headers["Retry-After"] == "1" and "--max_queue" in a.json()["error"]
        assert srv.upload(GOOD).status_code == 200
    finally:
        srv.stop()


@pytest.mark.slow
def test_a_folder_that_does_not_load_is_one_line_and_no_server(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "serve.py"), "--model_dir", str(tmp_path / "none"),
                           "--port", str(free_port())], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {tmp_path / 'none'}: folder not found (expected an "
                                                "export_model.py folder or a training checkpoint folder)"]


def test_the_batcher_groups_waiting_images_and_refuses_beyond_its_queue():
    """MicroBatcher alone, with an engine that records its batches: deterministic."""
    import asyncio

    from adkit.deploy.serving.batcher import BatcherClosed, MicroBatcher, QueueFull

    seen = []

    def engine(batch):
        seen.append(len(batch))
        future = concurrent.futures.Future()
        future.set_result((batch[:, 0] * 2, batch.reshape(len(batch), -1).max(axis=1)))
        return future

    async def scenario():
        batcher = MicroBatcher(engine, max_batch=4, max_wait=0.05, max_queue=6).start()
        images = [np.full((3, 2, 2), k, np.float32) for k in range(6)]
        answers = await asyncio.gather(*(batcher.submit(image) for image in images))
        assert [score for _, score, _ in answers] == [0, 1, 2, 3, 4, 5]  # each its own result
        assert all(np.array_equal(amap, np.full((2, 2), 2 * k)) for k, (amap, _, _) in enumerate(answers))
        assert seen == [4, 2] and [size for _, _, size in answers] == [4, 4, 4, 4, 2, 2]
        await batcher.close()

        held = []  # an engine that answers only when told: the queue fills behind its batch

        def slow_engine(batch):
            held.append((concurrent.futures.Future(), batch))
            return held[-1][0]

        batcher = MicroBatcher(slow_engine, max_batch=2, max_wait=0, max_queue=3).start()
        running = asyncio.ensure_future(batcher.submit(images[1]))
        await asyncio.sleep(0.01)  # taken: its batch is on the engine
        waiting = [asyncio.ensure_future(batcher.submit(images[k])) for k in (2, 3, 4)]
        await asyncio.sleep(0.01)
        assert batcher.depth() == 3
        with pytest.raises(QueueFull):  # a fourth while three wait
            await batcher.submit(images[5])
        closing = asyncio.ensure_future(batcher.close())  # runs what was queued, then stops
        while not closing.done():
            for future, batch in held:
                if not future.done():
                    future.set_result((batch[:, 0], batch.reshape(len(batch), -1).max(axis=1)))
            await asyncio.sleep(0.01)
        assert [(await w)[1] for w in [running] + waiting] == [1, 2, 3, 4]
        assert [len(batch) for _, batch in held] == [1, 2, 1]
        with pytest.raises(BatcherClosed):
            await batcher.submit(images[0])

    asyncio.run(scenario())


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for program in (CHROMIUM, CHROMEDRIVER):
        assert os.path.isfile(program), (f"{program} not found: the browser test needs Debian's chromium and "
                                         "chromium-driver (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait_for(driver, condition, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = driver.execute_script(condition)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {condition}")


@pytest.mark.slow
def test_the_page_shows_the_apis_answer_for_an_uploaded_image(exports, browser, tmp_path):
    from selenium.webdriver.common.by import By

    defect, good = tmp_path / "defect_part.png", tmp_path / "good_part.png"
    shutil.copy(DEFECTS[0], defect)
    shutil.copy(GOOD, good)
    audit = tmp_path / "decisions.csv"
    srv = Server(exports[0], "--audit_log", audit)
    try:
        browser.get(srv.url + "/")
        wait_for(browser, "return document.getElementById('model-info').textContent.includes('version')")
        assert browser.find_element(By.ID, "key-row").is_displayed()  # the server wants a key
        browser.find_element(By.ID, "api-key").send_keys(KEY)
        file_input = browser.find_element(By.ID, "file-input")
        file_input.send_keys(str(defect))
        wait_for(browser, "return document.body.dataset.done === '1'")
        assert browser.find_element(By.ID, "error").text == ""
        api = srv.upload(defect).json()
        shown = browser.find_element(By.ID, "score")
        assert float(shown.get_attribute("data-score")) == api["score"]
        assert shown.text == f"{api['score']:.6g}" or float(shown.text) == pytest.approx(api["score"], rel=1e-5)
        verdict = browser.find_element(By.ID, "verdict").text
        assert ("FAIL" in verdict) == (api["label"] == "defect") and ("PASS" in verdict) == (api["label"] == "good")
        rows = browser.find_elements(By.CSS_SELECTOR, "#regions tr")
        assert len(rows) == len(api["regions"])
        if rows:
            first = [td.text for td in rows[0].find_elements(By.TAG_NAME, "td")]
            region = api["regions"][0]
            assert first[1:6] == [str(region[k]) for k in ("x", "y", "width", "height", "area")]
        loaded = browser.execute_script(
            "const i = document.getElementById('overlay'); return i.complete && i.naturalWidth")
        assert loaded > 256  # the annotated overlay: image, header and colour bar

        file_input.send_keys(str(good))  # a second image: both in the history, newest first
        wait_for(browser, "return document.body.dataset.done === '2'")
        history = browser.find_elements(By.CSS_SELECTOR, "#history tr")
        assert [row.find_elements(By.TAG_NAME, "td")[1].text for row in history] == \
            ["good_part.png", "defect_part.png"]
        history[1].click()  # back to the defect
        assert float(browser.find_element(By.ID, "score").get_attribute("data-score")) == api["score"]

        # a folder with a 000.png in each of two lines: the history and the audit log tell them apart
        parts = tmp_path / "parts"
        for line, source in (("line1", DEFECTS[0]), ("line2", GOOD)):
            (parts / line).mkdir(parents=True)
            shutil.copy(source, parts / line / "000.png")
        browser.find_element(By.ID, "folder-input").send_keys(str(parts))
        wait_for(browser, "return document.body.dataset.done === '4'")
        assert browser.find_element(By.ID, "error").text == ""
        rows = browser.find_elements(By.CSS_SELECTOR, "#history tr")[:2]
        shown = [(row.find_elements(By.TAG_NAME, "td")[1].text, row.get_attribute("data-request-id"))
                 for row in rows]
        assert [path for path, _ in shown] == ["parts/line2/000.png", "parts/line1/000.png"]  # newest first
        with open(audit, newline="") as f:
            logged = {row["request_id"]: row for row in csv.DictReader(f)}
        for path, request_id in shown:  # the row's request id finds the audit row of the same image
            assert logged[request_id]["file_name"] == path
        assert float(logged[shown[1][1]]["score"]) == api["score"]  # line1's is the defect
        shot = tmp_path / "page.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("ADKIT_SCREENSHOT_DIR"):  # to look at it
            shutil.copy(shot, os.path.join(os.environ["ADKIT_SCREENSHOT_DIR"], "serving_page.png"))
    finally:
        srv.stop()


@pytest.mark.slow
def test_a_taken_port_is_one_line_before_the_model_loads(exports):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "serve.py"), "--model_dir", str(exports[0]),
                               "--port", str(port)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: --host 127.0.0.1 --port {port}: cannot listen there (Address already in use); "
        "choose another --port, or stop what uses it"]
