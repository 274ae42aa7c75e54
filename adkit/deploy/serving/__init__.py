"""The HTTP service (serve.py): a model folder behind FastAPI, for the inspection line.

``app`` builds the application and its routes; ``batcher`` groups concurrent requests into
engine batches; ``model_slot`` holds the model being served, swaps in a new one and keeps
reloads inside --model_root; ``decode`` turns a request's bytes into an image within the size
limits; ``metrics`` keeps the Prometheus counters; ``audit`` appends one CSV row per decision;
``page.html`` is the web page.
"""
