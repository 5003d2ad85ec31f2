"""Stage 1, prepare: read query sources, normalise, deduplicate, split train/held-out."""
