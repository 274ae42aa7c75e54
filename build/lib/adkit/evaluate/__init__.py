"""Scoring and judging: running a model over images (evaluation), the metrics in memory and
streamed at full resolution (metrics, pixel_metrics), the pass/fail threshold policies
(thresholds) and their calibration on training-side data (calibration), synthetic defects
(synthetic) and the defect regions of a map (regions). Imports adkit.core only."""
