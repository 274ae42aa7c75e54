"""What a run is asked to do: the command line and YAML options (config) and the registry of
methods that can do it (registry: each models/<name>/spec.py declares itself; the registry
finds them). Imports adkit.core, adkit.evaluate and adkit.outputs (for option values)."""
