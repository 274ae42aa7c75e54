"""serve.py --webhook to a local receiver: every verdict arrives (after the receiver's own
failures, by retrying), and a receiver that hangs never slows the answers: the bounded queue
drops verdicts and /metrics counts them."""
import concurrent.futures
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from test_serving import DEFECTS, GOOD, Server, exports  # noqa: F401 (exports: a fixture)


class Receiver:
    """An HTTP server on a free local port recording the JSON posted to it; it answers 500 to
    the first ``failures`` posts, and holds each post ``hold`` seconds."""

    def __init__(self, failures=0, hold=0.0):
        self.bodies, self.failures, self.hold, self.attempts = [], failures, hold, 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.attempts += 1
                time.sleep(receiver.hold)
                if receiver.attempts <= receiver.failures:
                    self.send_response(500)
                else:
                    receiver.bodies.append(json.loads(body))
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/verdicts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def counted(srv, outcome):
    prefix = f'adkit_webhook_posts_total{{outcome="{outcome}"}} '
    return sum(int(line[len(prefix):]) for line in srv.metrics().splitlines() if line.startswith(prefix))


@pytest.mark.slow
def test_every_verdict_reaches_the_webhook_with_retries(exports):
    receiver = Receiver(failures=2)
    srv = Server(exports[0], "--webhook", receiver.url, key=None)
    try:
        answers = [srv.upload(path).json() for path in DEFECTS[:4] + [GOOD]]
        deadline = time.time() + 30
        while len(receiver.bodies) < len(answers):
            assert time.time() < deadline, (receiver.attempts, srv.output())
            time.sleep(0.1)
        by_id = {body["request_id"]: body for body in receiver.bodies}
        assert sorted(by_id) == sorted(a["request_id"] for a in answers)
        for answer in answers:
            got = by_id[answer["request_id"]]
            assert (got["score"], got["label"], got["model_name"], got["model_version"]) == \
                (answer["score"], answer["label"], answer["model_name"], answer["model_version"])
            assert got["threshold"] == answer["threshold"]["value"] and "overlay_png" not in got
        assert receiver.attempts == len(answers) + 2  # the two refused posts were retried
        assert counted(srv, "sent") == len(answers) and counted(srv, "dropped") == 0
    finally:
        assert srv.stop() == 0
        receiver.close()


@pytest.mark.slow
def test_a_hanging_webhook_never_slows_the_answers(exports):
    receiver = Receiver(hold=3.0)
    srv = Server(exports[0], "--webhook", receiver.url, "--webhook_queue", 2, key=None)
    try:
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda p: srv.upload(p), (DEFECTS * 3)[:20]))
        took = time.perf_counter() - started
        assert [a.status_code for a in answers] == [200] * 20
        assert took < 3.0 * 2, took  # no answer waited for the receiver's 3 s
        assert counted(srv, "dropped") >= 20 - 2 - 1 - 2  # queue of 2, one being posted (and its retries)
        assert 'adkit_predictions_total{model="inference_first"' in srv.metrics()
    finally:
        srv.stop()
        receiver.close()
