"""Shared building blocks of the anomaly-detection toolkit (no model code lives here)."""

__version__ = "0.1.0"
