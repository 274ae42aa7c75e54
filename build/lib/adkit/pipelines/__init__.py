"""What main.py runs for each category: train (then calibrate the threshold), evaluate (metrics,
report, per-image outputs) and infer a folder, with the tables they print. The top floor: it
may import every part of adkit, and datasets/ and models/ (through the registry); main.py
only parses, validates and dispatches."""
