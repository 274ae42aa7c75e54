"""serve.py --webhook URL: each verdict posted as JSON to the line's system (MES, PLC gateway).

A background thread posts from a bounded queue, so the answer to the camera never waits for
the webhook: when the queue is full the verdict is dropped for the webhook (the answer and the
audit log still have it) and counted in /metrics. A post that fails (connection refused,
timeout, a status other than 2xx) is retried with exponential backoff (RETRY_DELAY, doubled each
time, RETRIES times), then counted as failed.
"""
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request

log = logging.getLogger("adkit")
RETRIES = 4
RETRY_DELAY = 0.5  # seconds before the first retry
TIMEOUT = 5.0  # seconds per post
FIELDS = ("request_id", "model_name", "model", "model_version", "score", "label", "threshold", "file_name",
          "part_id", "regions", "image_size")
_STOP = object()


def check_webhook_url(url):
    """None when ``url`` can be posted to, else the one line that says why not."""
    from urllib.parse import urlparse

    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        return f"--webhook {url}: expected an http:// or https:// URL"
    return None


class Webhook:
    def __init__(self, url, metrics, queue_size, retry_delay=RETRY_DELAY):
        self.url, self._metrics, self._retry_delay = url, metrics, retry_delay
        self._queue = queue.Queue(queue_size)
        self._thread = threading.Thread(target=self._run, name="webhook", daemon=True)
        self._thread.start()

    def post(self, answer):
        """Queue one verdict (never blocks)."""
        verdict = {key: answer.get(key) for key in FIELDS}
        verdict["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        try:
            self._queue.put_nowait(verdict)
        except queue.Full:
            self._count("dropped")

    def _count(self, outcome):
        self._metrics.count("adkit_webhook_posts_total", "Verdicts for --webhook, by outcome (sent, failed "
                            "after retries, dropped on a full queue).", outcome=outcome)

    def _run(self):
        while True:
            verdict = self._queue.get()
            if verdict is _STOP:
                return
            self._deliver(verdict)

    def _deliver(self, verdict):
        body = json.dumps(verdict).encode()
        delay = self._retry_delay
        for attempt in range(RETRIES + 1):
            request = urllib.request.Request(self.url, data=body, method="POST",
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                    response.read()
                self._count("sent")
                return
            except (urllib.error.URLError, OSError, ValueError) as err:
                if attempt == RETRIES:
                    log.warning("--webhook %s: verdict %s not delivered after %d tries (%s)", self.url,
                                verdict["request_id"], RETRIES + 1, err)
                    self._count("failed")
                    return
                time.sleep(delay)
                delay *= 2

    def close(self, seconds):
        """Deliver what is queued for up to ``seconds``, then stop (a daemon thread: what is left
        is given up when the process exits)."""
        try:
            self._queue.put(_STOP, timeout=seconds)
        except queue.Full:
            return
        self._thread.join(seconds)
