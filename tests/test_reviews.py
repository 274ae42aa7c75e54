"""Inspectors' reviews on a real server (serve.py --review_db, --keep_images): the review route
refuses bad bodies with one JSON line, concurrent posts all land in SQLite, they survive a
kill -9 and a restart, only reviewed images are kept within --keep_images_mb, and the web page's
model picker and review buttons drive the same routes in headless Chromium."""
import concurrent.futures
import csv
import io
import os
import shutil
import signal

import pytest

from test_serving import (DEFECTS, GOOD, KEY, SAMPLE, Server, browser, exports, httpx,  # noqa: F401 (fixtures)
                          wait_for)

VERDICT_FOR = {"defect": "false_alarm", "good": "missed_defect"}


def reviews_of(srv, name):
    answer = httpx.get(f"{srv.url}/models/{name}/reviews", headers=srv.headers, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()["reviews"]


@pytest.mark.slow
def test_reviews_are_checked_stored_in_sqlite_and_survive_a_kill(exports, tmp_path):
    db, kept = tmp_path / "reviews.db", tmp_path / "kept"
    name = exports[0].name  # a --model_dir model is named after its folder
    image_bytes = os.path.getsize(DEFECTS[0])
    options = ("--review_db", db, "--keep_images", kept, "--keep_images_mb", 2.5 * image_bytes / 2 ** 20,
               "--threshold", 650)  # a 64 px model: its stored threshold calls every test image a defect
    srv = Server(exports[0], *options)
    goods = sorted(os.path.join(SAMPLE, "good", n) for n in os.listdir(os.path.join(SAMPLE, "good")))
    answers = [srv.upload(path, route=f"/models/{name}/predict").json() for path in DEFECTS[:3] + goods]
    try:
        first = answers[0]
        good_answer = next(a for a in answers if a["label"] == "good")
        defect_answer = next(a for a in answers if a["label"] == "defect")
        refused = [  # (body or raw bytes, status, words of the error)
            (b"not json", 400, "JSON"),
            ({"verdict": "false_alarm"}, 422, "request_id"),
            ({"request_id": first["request_id"], "verdict": "looks fine"}, 422, "verdict"),
            ({"request_id": first["request_id"], "verdict": VERDICT_FOR[first["label"]], "note": 5}, 422, "note"),
            ({"request_id": "never-answered", "verdict": "false_alarm"}, 404, "never-answered"),
            ({"request_id": good_answer["request_id"], "verdict": "false_alarm"}, 422, "'good'"),
        ]
        for body, status, words in refused:
            kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
            response = srv.post(f"/models/{name}/review", **kwargs)
            assert response.status_code == status, (body, response.text)
            assert words in response.json()["error"] and "\n" not in response.json()["error"]
        unknown = srv.post("/models/other/review", json={"request_id": first["request_id"], "verdict": "false_alarm"})
        assert unknown.status_code == 404
        no_key = srv.post(f"/models/{name}/review", headers={"X-API-Key": ""},
                          json={"request_id": first["request_id"], "verdict": VERDICT_FOR[first["label"]]})
        assert no_key.status_code == 401
        assert httpx.get(f"{srv.url}/models/{name}/reviews").status_code == 401  # an admin route

        posts = [{"request_id": a["request_id"], "verdict": VERDICT_FOR[a["label"]], "note": f"n{k}"}
                 for k in range(50) for a in answers]
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            stored = list(pool.map(lambda body: srv.post(f"/models/{name}/review", json=body), posts))
        assert [r.status_code for r in stored] == [201] * len(posts)
        ids = sorted(r.json()["review_id"] for r in stored)
        assert len(set(ids)) == len(posts)
        confirmed = srv.post(f"/models/{name}/review", json={"request_id": defect_answer["request_id"],
                                                             "verdict": "defect_confirmed", "note": "crack"})
        assert confirmed.status_code == 201 and confirmed.json()["truth"] == "defect"
        assert f'adkit_reviews_total{{model="{name}",verdict="defect_confirmed"}} 1' in srv.metrics()
    finally:
        srv.stop(signal.SIGKILL)  # no clean shutdown: what was committed must be on disk

    srv = Server(exports[0], *options)  # the same database after the restart
    try:
        rows = reviews_of(srv, name)
        assert len(rows) == len(posts) + 1
        assert sorted((r["request_id"], r["note"]) for r in rows[:-1]) == \
            sorted((p["request_id"], p["note"]) for p in posts)
        last = rows[-1]
        assert (last["verdict"], last["truth"], last["note"]) == ("defect_confirmed", "defect", "crack")
        assert last["score"] == defect_answer["score"] and last["model_version"] == defect_answer["model_version"]
        exported = list(csv.DictReader(io.StringIO(httpx.get(f"{srv.url}/models/{name}/reviews?format=csv",
                                                             headers=srv.headers).text)))
        assert [int(r["id"]) for r in exported] == [r["id"] for r in rows]
        # only reviewed images are kept, at most --keep_images_mb: the oldest went first
        files = [os.path.join(where, f) for where, _, names in os.walk(kept) for f in names]
        assert 1 <= len(files) <= 2 and sum(os.path.getsize(f) for f in files) <= 2.5 * image_bytes
        assert last["image"] in files  # the newest stays
        assert open(last["image"], "rb").read() in [open(p, "rb").read() for p in DEFECTS[:3] + goods]

        # a client's own request id names the kept file only when it is a safe file name
        odd = srv.upload(DEFECTS[0], route=f"/models/{name}/predict", headers={"X-Request-Id": "../../escape"})
        assert odd.json()["request_id"] == "../../escape"
        review = srv.post(f"/models/{name}/review", json={"request_id": "../../escape",
                                                          "verdict": VERDICT_FOR[odd.json()["label"]]})
        assert review.status_code == 201, review.text
        assert os.path.dirname(review.json()["image"]) == str(kept / name)
        assert len(reviews_of(srv, name)) == len(posts) + 2
    finally:
        assert srv.stop() == 0


@pytest.mark.slow
def test_the_page_picks_a_model_and_sends_a_review(exports, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    models = tmp_path / "models"
    shutil.copytree(exports[0], models / "line_a")
    shutil.copytree(exports[1], models / "line_b")
    part = tmp_path / "part.png"
    shutil.copy(DEFECTS[0], part)
    srv = Server(models, "--review_db", tmp_path / "reviews.db", "--keep_images", tmp_path / "kept",
                 repository=True)
    try:
        browser.get(srv.url + "/")
        wait_for(browser, "return document.getElementById('model-select').options.length === 2")
        picker = Select(browser.find_element(By.ID, "model-select"))
        assert [o.text for o in picker.options] == ["line_a", "line_b"]
        picker.select_by_value("line_b")
        assert "not loaded" in browser.find_element(By.ID, "model-info").text
        browser.find_element(By.ID, "api-key").send_keys(KEY)
        browser.find_element(By.ID, "file-input").send_keys(str(part))
        wait_for(browser, "return document.body.dataset.done === '1'")
        assert browser.find_element(By.ID, "error").text == ""
        api = srv.upload(part, route="/models/line_b/predict").json()
        assert float(browser.find_element(By.ID, "score").get_attribute("data-score")) == api["score"]
        wait_for(browser, "return document.getElementById('model-info').textContent.includes('· loaded')")
        request_id = browser.find_element(By.CSS_SELECTOR, "#history tr").get_attribute("data-request-id")

        verdict = VERDICT_FOR[api["label"]]
        button = browser.find_element(By.ID, f"review-{verdict}")
        assert button.is_displayed()
        browser.find_element(By.ID, "review-note").send_keys("checked at the bench")
        button.click()
        wait_for(browser, "return document.getElementById('review-status').dataset.reviewId")
        assert browser.find_element(By.ID, "error").text == ""
        [row] = reviews_of(srv, "line_b")
        assert (row["request_id"], row["verdict"], row["note"]) == (request_id, verdict, "checked at the bench")
        assert row["score"] == api["score"] and os.path.isfile(row["image"])
        assert reviews_of(srv, "line_a") == []
    finally:
        srv.stop()
