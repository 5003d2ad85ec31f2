"""`cachetune calibrate`: a threshold for the user's own traffic, and which pairs to label for it.

``calibrate_adapter`` scores the user's labelled pairs with a registered adapter, picks the threshold
with a precision guarantee (threshold_bound.py) and stores it on the registry record as a named
calibration. ``suggest_pairs`` turns a log of unlabelled queries into candidate pairs and samples the
ones to label, mostly around the threshold, each with its inclusion probability so that
``calibrate_adapter`` can weight their labels back to the traffic's proportions.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from cachetune.core.errors import CachetuneError
from cachetune.core.evaluate.inputs import INCLUSION, read_pairs
from cachetune.core.evaluate.label_sampling import inclusion_probabilities, systematic_sample
from cachetune.core.evaluate.threshold_bound import calibrate_with_bound, curve_with_band, tightening
from cachetune.core.mining import nearest_neighbours
from cachetune.core.models import encode, sha256_file
from cachetune.core.text import exact_key


def pair_scores(model, rows: Sequence[dict]) -> np.ndarray:
    """Cosine of each pair's two texts, each distinct text encoded once."""
    from cachetune.core.evaluate.scoring import scores_of_pairs

    texts = list(dict.fromkeys([r["sentence1"] for r in rows] + [r["sentence2"] for r in rows]))
    return scores_of_pairs(rows, encode(model, texts), {t: i for i, t in enumerate(texts)})


def calibrate_adapter(registry, record: dict, load_model: Callable, pairs, *, columns=None,
                      target_precision: float = 0.95, confidence: float = 0.9, name: Optional[str] = None,
                      report_dir=None) -> dict:
    """Calibrate ``record``'s adapter (``load_model()`` loads it, once the pairs have been read and
    checked) on the labelled ``pairs`` file and store the calibration on ``registry`` — unless the
    target is unsupported, which is an error storing nothing."""
    rows = read_pairs(pairs, columns)
    weights = _weights(rows, pairs)
    scores = pair_scores(load_model(), rows)
    labels = np.array([r["label"] for r in rows])
    cal = calibrate_with_bound(scores, labels, target_precision, confidence, weights=weights)
    name = name or f"calibration-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    result = {"adapter": record["ref"], "name": name, **cal.to_dict(), "weighted": weights is not None,
              "tightening": tightening(scores, labels, cal, weights=weights),
              "pairs_file": str(Path(pairs).resolve()), "pairs_sha256": sha256_file(pairs)}
    if report_dir is not None:
        from cachetune.core.evaluate.calibrate_report import write_report

        curve = curve_with_band(scores, labels, confidence, weights=weights)
        result["report"] = str(write_report(report_dir, result, curve))
    if cal.threshold is None:
        more = [row for row in result["tightening"] if row["threshold"] is not None]
        hint = f"; about {more[0]['more_pairs']} more pairs like these would support it" if more else ""
        raise CachetuneError(f"{cal.reason}; nothing stored{hint}", pairs)
    stored = {k: result[k] for k in ("name", "threshold", "target_precision", "confidence", "precision_lower_bound",
                                     "precision_observed", "hit_rate", "served", "pairs", "positives",
                                     "weighted", "pairs_file", "pairs_sha256")}
    registry.add_calibration(record["ref"], stored)
    return result


def _weights(rows, where) -> Optional[np.ndarray]:
    """``1 / inclusion_probability`` when the pairs were sampled by ``--suggest``; None for plain pairs."""
    have = [INCLUSION in r for r in rows]
    if not any(have):
        return None
    if not all(have):
        raise CachetuneError(f"{INCLUSION} is given for {sum(have)} of {len(rows)} pairs: give it for all "
                             "(pairs from --suggest) or none", where)
    return 1.0 / np.array([r[INCLUSION] for r in rows])


def _candidate_pairs(emb: np.ndarray, neighbours: int):
    """``(i, j, cosine)`` for each query's ``neighbours`` nearest other queries, each pair once."""
    k = min(neighbours, len(emb) - 1)
    seen, pairs = set(), []
    for i, picked in enumerate(nearest_neighbours(emb, emb, k, skip=lambda i, j: i == j)):
        for j, score in picked:
            key = (min(i, j), max(i, j))
            if key not in seen:
                seen.add(key)
                pairs.append((key[0], key[1], score))
    return pairs


def suggest_pairs(record: dict, model, queries: Sequence[str], n: int, output, *, where=None,
                  threshold: Optional[float] = None, neighbours: int = 3, seed: int = 0) -> dict:
    """Write ``n`` candidate pairs among ``queries`` to ``output`` (label left empty), sampled around the
    threshold with the inclusion probability of each written beside it (label_sampling.py)."""
    if n < 1:
        raise CachetuneError("--suggest must be at least 1")
    texts, keys = [], set()
    for text in queries:
        if exact_key(text) not in keys:
            keys.add(exact_key(text))
            texts.append(text)
    if len(texts) < 2:
        raise CachetuneError(f"need at least 2 distinct queries, found {len(texts)}", where)
    if threshold is None:
        threshold = record.get("calibrated_threshold")
    if threshold is None:
        raise CachetuneError(f"adapter '{record['ref']}' has no threshold yet: evaluate or calibrate it first, "
                             "or pass --threshold")
    candidates = _candidate_pairs(encode(model, texts), neighbours)
    scores = np.array([c[2] for c in candidates])
    probabilities = inclusion_probabilities(scores, threshold, n)
    chosen = systematic_sample(scores, probabilities, seed)
    rows = [{"sentence1": texts[candidates[i][0]], "sentence2": texts[candidates[i][1]], "label": "",
             "score": round(candidates[i][2], 4), INCLUSION: float(probabilities[i])} for i in chosen]
    _write_rows(Path(output), rows)
    return {"adapter": record["ref"], "threshold": threshold, "queries": len(texts), "candidates": len(candidates),
            "written": len(rows), "output": str(output)}


def _write_rows(path: Path, rows) -> None:
    import csv
    import io
    import json

    from cachetune.core.jsonl import atomic_writer

    with atomic_writer(path) as fh:
        if path.suffix.lower() in (".csv", ".tsv"):
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=["sentence1", "sentence2", "label", "score", INCLUSION],
                                    delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            writer.writeheader()
            writer.writerows(rows)
            fh.write(buffer.getvalue())
        else:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
