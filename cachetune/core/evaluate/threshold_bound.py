"""A cache threshold with a stated guarantee, from a user's labelled pairs (pure numpy/scipy).

The claim: with probability at least ``confidence`` (over the draw of the labelled pairs), the
precision of the cache on traffic like those pairs, at the chosen threshold, is at least the
target. Precision above a threshold ``t`` is bounded below with the exact (Clopper-Pearson)
binomial bound on the pairs scoring ``>= t``.

Choosing ``t`` on the same pairs that bound it would break the guarantee if every candidate were
tried at full level. Candidates are therefore tested as a *fixed sequence* ("learn then test"):
a grid of thresholds fixed in advance, walked from high to low, each tested at the full level,
stopping at the first one that fails. The family-wise error stays at ``1 - confidence``.
Thresholds with fewer pairs above them than any bound could need are skipped: that rule looks
at scores only, never at labels, so it does not spend any error.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence

import numpy as np

GRID_STEP = 0.0025


def precision_lower_bound(hits: int, served: int, confidence: float) -> float:
    """One-sided Clopper-Pearson lower bound on a proportion: ``hits`` right of ``served``."""
    if served <= 0:
        return 0.0
    if hits <= 0:
        return 0.0
    from scipy.stats import beta

    return float(beta.ppf(1.0 - confidence, hits, served - hits + 1))


def min_served_for(target: float, confidence: float) -> int:
    """Fewest pairs above a threshold whose bound can reach ``target`` (all of them right)."""
    return max(1, math.ceil(math.log(1.0 - confidence) / math.log(target)))


@dataclass(frozen=True)
class Calibration:
    """The chosen threshold and what it promises (``threshold`` None: the target is not supported)."""

    threshold: Optional[float]
    target_precision: float
    confidence: float
    precision_lower_bound: Optional[float]
    precision_observed: Optional[float]
    hit_rate: Optional[float]
    served: int
    pairs: int
    positives: int
    tested: int
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _counts(scores: np.ndarray, labels: np.ndarray, threshold: float):
    above = scores >= threshold
    return int(above.sum()), int(labels[above].sum())


def calibrate_with_bound(scores: Sequence[float], labels: Sequence[int], target_precision: float = 0.95,
                         confidence: float = 0.9, step: float = GRID_STEP) -> Calibration:
    """The lowest grid threshold reached by the fixed-sequence test (see the module docstring)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if not 0.0 < target_precision < 1.0:
        raise ValueError("target precision must lie strictly between 0 and 1")
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must lie strictly between 0 and 1")
    positives = int(labels.sum())
    needed = min_served_for(target_precision, confidence)
    grid = np.round(np.arange(1.0, max(float(scores.min(initial=1.0)), -1.0) - step, -step), 6)
    best = None
    tested = 0
    for t in grid:
        served, hits = _counts(scores, labels, float(t))
        if served < needed:
            continue  # decided by scores alone: no test spent
        tested += 1
        bound = precision_lower_bound(hits, served, confidence)
        if bound < target_precision:
            break
        best = (float(t), hits, served, bound)
    if best is None:
        reason = (f"{len(scores)} pairs ({positives} same-question) cannot support precision "
                  f"{target_precision:g} at confidence {confidence:g}: at least {needed} pairs above the "
                  f"threshold must all be right, and the highest-scoring pairs were not")
        return Calibration(None, target_precision, confidence, None, None, None, 0, len(scores), positives,
                           tested, reason)
    t, hits, served, bound = best
    return Calibration(t, target_precision, confidence, bound, hits / served,
                       hits / positives if positives else 0.0, served, len(scores), positives, tested)


def tightening(calibration: Calibration, factors: Sequence[int] = (2, 4)) -> List[dict]:
    """What the bound would become with ``factor`` times the pairs, if they looked like these."""
    out = []
    if calibration.threshold is None:
        return out
    precision = calibration.precision_observed
    for factor in factors:
        served = calibration.served * factor
        hits = int(round(precision * served))
        out.append({"factor": factor, "more_pairs": calibration.pairs * (factor - 1),
                    "precision_lower_bound": precision_lower_bound(hits, served, calibration.confidence)})
    return out


def curve_with_band(scores: Sequence[float], labels: Sequence[int], confidence: float,
                    points: int = 200) -> dict:
    """Precision (with its lower bound) and hit rate against the threshold, for the report plot."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    positives = max(int(labels.sum()), 1)
    grid = np.linspace(float(scores.min()), float(scores.max()), points)
    precision, lower, hit = [], [], []
    for t in grid:
        served, hits = _counts(scores, labels, float(t))
        precision.append(hits / served if served else np.nan)
        lower.append(precision_lower_bound(hits, served, confidence) if served else np.nan)
        hit.append(hits / positives)
    return {"threshold": grid.tolist(), "precision": precision, "lower_bound": lower, "hit_rate": hit}


def informative_pairs(scores: Sequence[float], threshold: float, n: int) -> List[int]:
    """Indices of ``n`` candidate pairs to label: the ``2n`` scoring nearest ``threshold``, thinned
    to ``n`` spread evenly over the score range they span (both sides of the threshold)."""
    scores = np.asarray(scores, dtype=np.float64)
    if n >= len(scores):
        return list(range(len(scores)))
    near = np.argsort(np.abs(scores - threshold), kind="stable")[: min(len(scores), 2 * n)]
    near = near[np.argsort(scores[near], kind="stable")]
    picks = np.unique(np.round(np.linspace(0, len(near) - 1, n)).astype(int))
    return [int(i) for i in near[picks]]
