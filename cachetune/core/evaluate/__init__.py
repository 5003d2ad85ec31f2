"""Stage 4, evaluate: base vs adapter on triplets and labelled pairs; thresholds, reports, plots.

metrics is pure numpy; inputs resolves evaluation sets; runner encodes and scores;
report and plots write metrics.json, report.md and the PNG curves.
"""
