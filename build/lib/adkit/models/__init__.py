"""The anomaly-detection methods, one folder each (see doc/architecture.md); each registers
itself in its ``spec.py`` (adkit/options/registry.py finds them)."""
