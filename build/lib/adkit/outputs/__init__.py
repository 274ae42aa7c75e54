"""What users keep from a run: run folders replaced atomically with per-image overlays, masks,
maps and CSVs (folders), heat-map pictures (visualize), report.html (report) and the eval
folder with the metrics summaries (eval_folder). Imports adkit.core and adkit.evaluate."""
