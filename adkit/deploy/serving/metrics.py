"""GET /metrics: the service's counters in Prometheus' text format (no client library needed)."""
import threading

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # seconds
PREDICT_ROUTES = ("/predict", "/models/{name}/predict")  # latency and in-flight count


def _label(value):
    """A label value in Prometheus' text format (a model's name is a folder's: any character)."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


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
        self.predictions = {}  # (model name, label) -> answers
        self.model_loads = {}  # (model name, outcome) -> loads
        self.load_seconds = {}  # model name -> seconds its last load took
        self.evictions = {}  # model name -> times unloaded to make room
        self.models_loaded = None  # the repository's count of loaded engines, set by the app
        self.counters = {}  # (name, help, labels tuple) -> count: the features' own (reviews, webhook)

    def started(self, path):
        if path in PREDICT_ROUTES:
            with self._lock:
                self.in_flight += 1

    def observe_request(self, path, status, seconds):
        with self._lock:
            if path in PREDICT_ROUTES:
                self.in_flight -= 1
            key = (path, int(status))
            self.requests[key] = self.requests.get(key, 0) + 1
            if path in PREDICT_ROUTES:
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

    def observe_prediction(self, model_name, label):
        with self._lock:
            key = (model_name, label or "none")
            self.predictions[key] = self.predictions.get(key, 0) + 1

    def observe_model_load(self, model_name, ok, seconds):
        with self._lock:
            key = (model_name, "ok" if ok else "failed")
            self.model_loads[key] = self.model_loads.get(key, 0) + 1
            if ok:
                self.load_seconds[model_name] = seconds

    def observe_eviction(self, model_name):
        with self._lock:
            self.evictions[model_name] = self.evictions.get(model_name, 0) + 1

    def count(self, name, help_text, **labels):
        """Add one to the counter ``name`` with these labels (declared by its first use)."""
        with self._lock:
            key = (name, help_text, tuple(sorted(labels.items())))
            self.counters[key] = self.counters.get(key, 0) + 1

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
            lines += ["# HELP adkit_predictions_total Answered predictions, by model name and label.",
                      "# TYPE adkit_predictions_total counter"]
            lines += [f'adkit_predictions_total{{model="{_label(m)}",label="{label}"}} {v}'
                      for (m, label), v in sorted(self.predictions.items())]
            lines += ["# HELP adkit_model_loads_total Engines loaded, by model name and outcome.",
                      "# TYPE adkit_model_loads_total counter"]
            lines += [f'adkit_model_loads_total{{model="{_label(m)}",outcome="{o}"}} {v}'
                      for (m, o), v in sorted(self.model_loads.items())]
            lines += ["# HELP adkit_model_load_seconds How long the model's last load took.",
                      "# TYPE adkit_model_load_seconds gauge"]
            lines += [f'adkit_model_load_seconds{{model="{_label(m)}"}} {v:.3f}'
                      for m, v in sorted(self.load_seconds.items())]
            lines += ["# HELP adkit_model_evictions_total Engines unloaded to stay within --max_loaded.",
                      "# TYPE adkit_model_evictions_total counter"]
            lines += [f'adkit_model_evictions_total{{model="{_label(m)}"}} {v}'
                      for m, v in sorted(self.evictions.items())]
            if self.models_loaded is not None:
                lines += ["# HELP adkit_models_loaded Engines loaded now.", "# TYPE adkit_models_loaded gauge",
                          f"adkit_models_loaded {self.models_loaded()}"]
            declared = set()
            for (name, help_text, labels), v in sorted(self.counters.items()):
                if name not in declared:
                    declared.add(name)
                    lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
                inside = ",".join(f'{k}="{_label(value)}"' for k, value in labels)
                lines.append(f"{name}{{{inside}}} {v}" if inside else f"{name} {v}")
            return "\n".join(lines) + "\n"
