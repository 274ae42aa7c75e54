"""serve.py --model_repository as a real server on a free local port: every folder served at
/models/{name}/predict, GET /models, lazy loading (concurrent first requests load once),
--max_loaded eviction of the least recently used, folders added / replaced / removed while it
runs, and the model name in /metrics and the audit log."""
import concurrent.futures
import csv
import os
import shutil
import time

import pytest

from test_serving import DEFECTS, GOOD, KEY, Server, exports, httpx  # noqa: F401 (exports: a fixture)


@pytest.fixture
def repository(exports, tmp_path):
    """models/: a, b (exports of two different PaDiM fits) and ckpt (the first's training folder)."""
    models = tmp_path / "models"
    shutil.copytree(exports[0], models / "a")
    shutil.copytree(exports[1], models / "b")
    shutil.copytree(exports[0].parent / "out_first" / "padim" / "brick", models / "ckpt")
    return models


def listing(srv):
    return {m["name"]: m for m in httpx.get(srv.url + "/models", timeout=30).json()["models"]}


def metric(text, prefix):
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines() if line.startswith(prefix))


def wait_until(condition, srv, timeout=30):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, srv.output()
        time.sleep(0.3)


@pytest.mark.slow
def test_a_repository_serves_each_folder_lazily_within_max_loaded(repository, exports, tmp_path):
    from adkit import Predictor

    audit = tmp_path / "decisions.csv"
    srv = Server(repository, "--max_loaded", 2, "--audit_log", audit, repository=True)
    try:
        models = listing(srv)
        assert sorted(models) == ["a", "b", "ckpt"]
        assert {m["state"] for m in models.values()} == {"not loaded"}
        assert {m["model"] for m in models.values()} == {"padim"}
        assert models["a"]["version"] != models["b"]["version"] and models["a"]["version_number"] == 1
        assert models["a"]["threshold"]["value"] == Predictor(str(exports[0]), cpu_threads=1).threshold.value

        # concurrent first requests: one load, every answer from the model the name says
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            first = list(pool.map(lambda p: srv.upload(p, route="/models/a/predict"), DEFECTS[:8]))
        assert [r.status_code for r in first] == [200] * 8, first[0].text
        assert metric(srv.metrics(), 'adkit_model_loads_total{model="a",outcome="ok"}') == 1
        expected = Predictor(str(exports[0]), cpu_threads=1)
        for path, answer in zip(DEFECTS[:8], first):
            body = answer.json()
            assert body["score"] == pytest.approx(expected.predict(path).score, rel=1e-5)
            assert body["model_name"] == "a" and body["request_id"]
        assert listing(srv)["a"]["state"] == "loaded"

        b = srv.upload(GOOD, route="/models/b/predict").json()
        assert b["model_version"] == models["b"]["version"]
        ckpt = srv.upload(DEFECTS[0], route="/models/ckpt/predict").json()  # a checkpoint folder
        assert ckpt["score"] == pytest.approx(first[0].json()["score"], rel=1e-4)  # the same fit as a
        states = {name: m["state"] for name, m in listing(srv).items()}
        assert states == {"a": "not loaded", "b": "loaded", "ckpt": "loaded"}  # a: least recently used
        text = srv.metrics()
        assert 'adkit_model_evictions_total{model="a"} 1' in text and "adkit_models_loaded 2" in text
        assert srv.upload(GOOD, route="/models/a/predict").status_code == 200  # loaded again
        assert metric(srv.metrics(), 'adkit_model_loads_total{model="a",outcome="ok"}') == 2
        assert listing(srv)["b"]["state"] == "not loaded"
        assert metric(srv.metrics(), 'adkit_predictions_total{model="a"') == 9

        unknown = srv.upload(GOOD, route="/models/nope/predict")
        assert unknown.status_code == 404 and "nope" in unknown.json()["error"]
        single = srv.upload(GOOD)  # /predict belongs to --model_dir
        assert single.status_code == 404 and "/models/" in single.json()["error"]
        assert srv.upload(GOOD, route="/models/a/predict", headers={"X-API-Key": ""}).status_code == 401

        with open(audit, newline="") as f:
            rows = list(csv.DictReader(f))
        assert [row["model_name"] for row in rows] == ["a"] * 8 + ["b", "ckpt", "a"]
        assert "Traceback" not in srv.output()
    finally:
        assert srv.stop() == 0


@pytest.mark.slow
def test_folders_added_replaced_and_removed_are_picked_up_without_a_restart(repository, exports):
    srv = Server(repository, "--max_loaded", 3, repository=True)
    try:
        before = srv.upload(DEFECTS[0], route="/models/a/predict").json()
        shutil.copytree(exports[1], repository / "new")  # added
        wait_until(lambda: "new" in listing(srv), srv)
        added = srv.upload(DEFECTS[0], route="/models/new/predict")
        assert added.status_code == 200 and added.json()["model_version"] != before["model_version"]

        for name in os.listdir(exports[1]):  # replaced in place: the next request gets the new files
            shutil.copy(exports[1] / name, repository / "a" / name)
        wait_until(lambda: listing(srv)["a"]["version"] == added.json()["model_version"], srv)
        after = srv.upload(DEFECTS[0], route="/models/a/predict").json()
        assert after["model_version"] == added.json()["model_version"]
        assert after["score"] == added.json()["score"] != before["score"]

        (repository / "broken").mkdir()  # a folder that does not load: 503 with the reason, others serve
        (repository / "broken" / "deploy_config.json").write_text("{}")
        wait_until(lambda: "broken" in listing(srv), srv)
        broken = srv.upload(GOOD, route="/models/broken/predict")
        assert broken.status_code == 503 and "broken" in broken.json()["error"]
        assert listing(srv)["broken"]["state"] == "failed"

        shutil.rmtree(repository / "new")  # removed
        wait_until(lambda: "new" not in listing(srv), srv)
        assert srv.upload(GOOD, route="/models/new/predict").status_code == 404
        assert srv.upload(GOOD, route="/models/a/predict").status_code == 200
        assert httpx.get(srv.url + "/ready").json()["ready"] is True
        assert "Traceback" not in srv.output()
    finally:
        assert srv.stop() == 0
