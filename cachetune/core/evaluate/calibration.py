"""The threshold a cache is given: chosen out of sample, with the precision it keeps on unseen pairs.

The in-sample choice -- the lowest threshold whose precision on a set reaches the target --
sits, by construction, right on a positive pair's score, so on new traffic its precision is
usually below the target. Here the threshold is chosen the way it will be used: on pairs it
has not seen.

- Repeated stratified k-fold (default 5 folds x 10 repeats, seeded): each fold's pairs are
  scored with the threshold calibrated on the other folds. Pooled over folds and repeats that
  gives the precision and hit rate a threshold rule *keeps* on unseen pairs.
- The rule is "calibrate for an inner target t on the calibration pairs". t starts at the
  target and rises in steps of 0.005 up to 1; the first t whose pooled unseen precision reaches
  the target is kept, and the stored threshold is that rule applied to all the pairs.
- Beside the precision kept, a one-sided 95% Wilson lower bound on it (n = the unseen hits of
  one repeat, since each repeat sees every pair once).
- When no t reaches the target on unseen pairs, the target cannot be supported by this data:
  no threshold is stored and the reason says what precision unseen pairs did reach.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import numpy as np

from cachetune.core.evaluate.metrics import calibrate, rank_pairs

FOLDS = 5
REPEATS = 10
STEP = 0.005
Z_95 = 1.6448536269514722  # one-sided 95%


def wilson_lower(successes: float, trials: float, z: float = Z_95) -> Optional[float]:
    """The Wilson score lower bound of a proportion (``None`` with no trials)."""
    if trials <= 0:
        return None
    p = successes / trials
    denom = 1 + z * z / trials
    centre = p + z * z / (2 * trials)
    spread = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return max(0.0, (centre - spread) / denom)


def stratified_folds(labels: np.ndarray, folds: int, repeats: int, seed: int) -> List[List[np.ndarray]]:
    """``repeats`` lists of ``folds`` index arrays; each class is dealt round-robin after a shuffle."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(repeats):
        assignment = np.empty(labels.size, dtype=np.int64)
        for value in (0, 1):
            idx = np.flatnonzero(labels == value)
            assignment[rng.permutation(idx)] = np.arange(idx.size) % folds
        out.append([np.flatnonzero(assignment == f) for f in range(folds)])
    return out


def _unseen_counts(scores, labels, splits, inner_target: float) -> Tuple[int, int]:
    """(true hits, false hits) on held-out folds, each fold thresholded by the others' calibration."""
    tp = fp = 0
    for folds in splits:
        for held in folds:
            train = np.setdiff1d(np.arange(scores.size), held, assume_unique=True)
            train_labels = labels[train]
            if train_labels.min() == train_labels.max():
                continue
            threshold = calibrate(rank_pairs(scores[train], train_labels), inner_target)["calibrated_threshold"]
            if threshold is None:
                continue  # no threshold reached the target: the cache never hits these pairs
            hit = scores[held] >= threshold
            tp += int(np.sum(hit & (labels[held] == 1)))
            fp += int(np.sum(hit & (labels[held] == 0)))
    return tp, fp


def retention(scores, labels, inner_target: float, splits) -> Dict[str, Optional[float]]:
    """What calibrating for ``inner_target`` keeps on unseen pairs: precision, its lower bound,
    hit rate and false-hit rate, pooled over the folds of every repeat."""
    labels = np.asarray(labels).astype(np.int64)
    tp, fp = _unseen_counts(np.asarray(scores, dtype=np.float64), labels, splits, inner_target)
    repeats = len(splits)
    hits = tp + fp
    return {
        "precision": tp / hits if hits else None,
        "precision_lower_95": wilson_lower(tp / repeats, hits / repeats) if hits else None,
        "hit_rate": tp / (repeats * int(labels.sum())),
        "false_hit_rate": fp / (repeats * int((labels == 0).sum())),
        "unseen_hits_per_repeat": hits / repeats,
    }


def out_of_sample_threshold(scores, labels, target_precision: float, folds: int = FOLDS, repeats: int = REPEATS,
                            seed: int = 0) -> dict:
    """The threshold to store for ``target_precision`` and what it keeps on unseen pairs.

    Returns ``threshold`` (``None`` when unsupported, with ``reason``), ``inner_target``,
    ``in_sample_threshold`` (the plain calibration on all pairs) and, for both rules,
    ``retention`` / ``in_sample_retention``: precision, its lower bound, hit rate and
    false-hit rate on unseen pairs.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(np.int64)
    ranked = rank_pairs(scores, labels)
    in_sample = calibrate(ranked, target_precision)["calibrated_threshold"]
    out = {"target_precision": float(target_precision), "in_sample_threshold": in_sample, "folds": folds,
           "repeats": repeats, "threshold": None, "inner_target": None, "retention": None,
           "in_sample_retention": None, "reason": None}
    folds = min(folds, ranked.positives, ranked.negatives)
    if folds < 2:
        out["reason"] = (f"too few pairs to check a threshold on unseen pairs ({ranked.positives} with label 1, "
                         f"{ranked.negatives} with label 0)")
        return out
    out["folds"] = folds
    splits = stratified_folds(labels, folds, repeats, seed)
    out["in_sample_retention"] = retention(scores, labels, target_precision, splits)
    best = None
    steps = int(round((1.0 - target_precision) / STEP))
    for i in range(steps + 1):
        inner = min(1.0, target_precision + i * STEP)
        kept = out["in_sample_retention"] if i == 0 else retention(scores, labels, inner, splits)
        if kept["precision"] is not None and (best is None or kept["precision"] > best[1]["precision"]):
            best = (inner, kept)
        if kept["precision"] is not None and kept["precision"] >= target_precision - 1e-12:
            threshold = calibrate(ranked, inner)["calibrated_threshold"]
            if threshold is not None:
                out.update(threshold=threshold, inner_target=round(inner, 6), retention=kept)
                return out
    if best is None:
        out["reason"] = f"no threshold reaches precision {target_precision:g} on any calibration fold"
    else:
        out["reason"] = (f"precision {target_precision:g} is not supported on unseen pairs: the best any "
                         f"calibration kept was {best[1]['precision']:.3f} (inner target {best[0]:.3f}, "
                         f"{best[1]['unseen_hits_per_repeat']:.0f} hits per repeat)")
        out["best_retention"] = best[1]
    return out
