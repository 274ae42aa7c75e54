"""A small client of serve.py on the standard library alone (what the line's own software or a
script needs; the TIPC serving pipeline and benchmark/bench_serve.py use it).

    from adkit.deploy.serving.client import ServiceClient
    client = ServiceClient("http://127.0.0.1:8866", api_key=None)
    answer = client.predict_file("part.png", part_id="A-1234")   # dict: score, label, regions ...
"""
import http.client
import json
import threading
import time
import urllib.parse


class ServiceError(Exception):
    def __init__(self, status, message, headers=None):
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message, self.headers = status, message, headers or {}


class ServiceClient:
    """One keep-alive connection per thread (http.client connections are not thread-safe)."""

    def __init__(self, url, api_key=None, timeout=60.0, model=None):
        """``model``: a model of serve.py --model_repository (None: the --model_dir one)."""
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"{url}: expected http://HOST:PORT")
        self.host, self.port = parsed.hostname, parsed.port or 80
        self.api_key, self.timeout = api_key, timeout
        self.prefix = "" if model is None else "/models/" + urllib.parse.quote(model, safe="")
        self._local = threading.local()

    def _connection(self):
        if getattr(self._local, "conn", None) is None:
            self._local.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self._local.conn

    def request(self, method, path, body=None, headers=None):
        """(status, headers, body bytes); one retry on a connection the server had closed."""
        headers = dict(headers or {})
        if self.api_key:
            headers["X-API-Key"] = self.api_key
        for attempt in (0, 1):
            conn = self._connection()
            try:
                self._send(conn, method, path, body, headers)
                response = conn.getresponse()
                data = response.read()
                if response.getheader("connection", "").lower() == "close":
                    self.close()
                return response.status, dict(response.getheaders()), data
            except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
                self.close()
                if attempt:
                    raise

    @staticmethod
    def _send(conn, method, path, body, headers):
        """The request, its body in blocks: a server that refuses a large body answers and
        closes before it is all sent; its answer is still there to read."""
        conn.putrequest(method, path)
        for key, value in {**headers, "Content-Length": str(len(body or b""))}.items():
            conn.putheader(key, value)
        conn.endheaders()
        try:
            for start in range(0, len(body or b""), 1 << 16):
                conn.send(body[start:start + (1 << 16)])
        except (BrokenPipeError, ConnectionResetError):
            pass  # read the answer (413) that came before the end of the body

    def predict_bytes(self, data, part_id="", overlay=False, file_name=""):
        """The answer (dict) for one encoded image; ServiceError for any status but 200.
        ``file_name`` and ``part_id`` go into the service's audit log with the decision."""
        fields = (("part_id", part_id), ("file_name", file_name), ("overlay", "true" if overlay else ""))
        query = urllib.parse.urlencode({k: v for k, v in fields if v})
        return self._answer(self.request("POST", self.prefix + "/predict" + ("?" + query if query else ""), data,
                                         {"Content-Type": "application/octet-stream"}), 200)

    def review(self, request_id, verdict, note=""):
        """Send an inspector's verdict on an answer (a --model_repository model, or the
        --model_dir one named after its folder: ``model`` given); the stored review (dict)."""
        if not self.prefix:
            raise ValueError("review: name the model (ServiceClient(..., model=NAME))")
        body = json.dumps({"request_id": request_id, "verdict": verdict, "note": note}).encode()
        return self._answer(self.request("POST", self.prefix + "/review", body,
                                         {"Content-Type": "application/json"}), 201)

    @staticmethod
    def _answer(response, expected):
        status, headers, body = response
        if status != expected:
            try:
                message = json.loads(body)["error"]
            except (ValueError, KeyError, TypeError):
                message = body[:200].decode("utf-8", "replace")
            raise ServiceError(status, message, headers)
        return json.loads(body)

    def predict_file(self, path, part_id="", overlay=False):
        """predict_bytes of the file at ``path``, recorded under that path."""
        with open(path, "rb") as f:
            return self.predict_bytes(f.read(), part_id, overlay, file_name=str(path))

    def wait_ready(self, seconds):
        """True once GET /ready answers 200 within ``seconds``."""
        deadline = time.time() + seconds
        while time.time() < deadline:
            try:
                if self.request("GET", "/ready")[0] == 200:
                    return True
            except OSError:
                self.close()
            time.sleep(0.2)
        return False

    def close(self):
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None
