"""GET /metrics: the service's counters in Prometheus' text format (no client library needed)."""
import threading

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # seconds


class ServiceMetrics:
    def __init__(self, max_batch):
        self._lock = threading.Lock()
        self.requests = {}  # (path, status) -> count
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)  # per bucket, the last is +Inf
        self.latency_sum = 0.0
        self.batch_counts = [0] * (max_batch + 1)  # batch size -> batches run
        self.queue_depth = lambda: 0  # the batcher's, set by the app
        self.in_flight = 0  # /predict requests received and not yet answered
        self.reloads = {"ok": 0, "failed": 0}

    def started(self, path):
        if path == "/predict":
            with self._lock:
                self.in_flight += 1

    def observe_request(self, path, status, seconds):
        with self._lock:
            if path == "/predict":
                self.in_flight -= 1
            key = (path, int(status))
            self.requests[key] = self.requests.get(key, 0) + 1
            if path == "/predict":
                self.latency_sum += seconds
                bucket = next((i for i, edge in enumerate(LATENCY_BUCKETS) if seconds <= edge),
                              len(LATENCY_BUCKETS))
                self.latency_counts[bucket] += 1

    def observe_batch(self, size):
        with self._lock:
            if size >= len(self.batch_counts):
                self.batch_counts += [0] * (size + 1 - len(self.batch_counts))
            self.batch_counts[size] += 1

    def observe_reload(self, ok):
        with self._lock:
            self.reloads["ok" if ok else "failed"] += 1

    def text(self):
        with self._lock:
            lines = ["# HELP adkit_requests_total HTTP requests answered, by path and status.",
                     "# TYPE adkit_requests_total counter"]
            for (path, status), count in sorted(self.requests.items()):
                lines.append(f'adkit_requests_total{{path="{path}",status="{status}"}} {count}')
            lines += ["# HELP adkit_predict_latency_seconds Time from request to answer of POST /predict.",
                      "# TYPE adkit_predict_latency_seconds histogram"]
            cumulative = 0
            for edge, count in zip(LATENCY_BUCKETS + ("+Inf",), self.latency_counts):
                cumulative += count
                lines.append(f'adkit_predict_latency_seconds_bucket{{le="{edge}"}} {cumulative}')
            lines += [f"adkit_predict_latency_seconds_sum {self.latency_sum:.6f}",
                      f"adkit_predict_latency_seconds_count {cumulative}",
                      "# HELP adkit_requests_in_flight POST /predict requests being answered.",
                      "# TYPE adkit_requests_in_flight gauge", f"adkit_requests_in_flight {self.in_flight}",
                      "# HELP adkit_queue_depth Images waiting for the engine.",
                      "# TYPE adkit_queue_depth gauge", f"adkit_queue_depth {self.queue_depth()}",
                      "# HELP adkit_batches_total Engine batches run, by number of images.",
                      "# TYPE adkit_batches_total counter"]
            for size, count in enumerate(self.batch_counts):
                if size and count:
                    lines.append(f'adkit_batches_total{{size="{size}"}} {count}')
            lines += ["# HELP adkit_reloads_total Model reloads, by outcome.",
                      "# TYPE adkit_reloads_total counter"]
            lines += [f'adkit_reloads_total{{outcome="{k}"}} {v}' for k, v in self.reloads.items()]
            return "\n".join(lines) + "\n"
