"""A cache threshold with a stated guarantee, from a user's labelled pairs (pure numpy/scipy).

The claim: with probability at least ``confidence`` (over the draw of the labelled pairs), the
precision of the cache on traffic like those pairs, at the chosen threshold, is at least the
target. That target is the lower bound ``calibrate`` states, and the only one it can state: the
threshold was chosen with the same pairs, so the exact (Clopper-Pearson) binomial bound computed at
the chosen threshold alone is too high: it was picked where the pairs looked good, so it lies
above the true precision more often than ``1 - confidence`` (bench/calibrate.py counts how often).

Choosing the threshold on the same pairs would break the guarantee if every candidate were tried at
full level. Candidates are therefore tested as a *fixed sequence* ("learn then test"): a grid of
thresholds fixed in advance (every ``GRID_STEP`` of cosine), walked from high to low, each tested at
the full level (its Clopper-Pearson bound on the pairs scoring ``>=`` it must reach the target),
stopping at the first that fails; the lowest that passed is chosen. A false claim needs the first
tested threshold whose true precision is below target to pass its own test: probability at most
``1 - confidence``.

Where the walk starts is decided by the pairs' *scores only*, never their labels: at the highest grid
threshold serving a tenth of the pairs (``START_SHARE``; when weighted, a tenth by count and by
weight) and at least the fewest whose bound could reach the target. Starting at the very top would stop at once on near-miss traffic, where one of
the few highest-scoring pairs is wrong (RQE: the third), and certify nothing although precision is
on target lower down. The textbook proof fixes the sequence before any data is seen and does not
cover a start read off the scores exactly (scores and labels are not independent), so the guarantee
is checked: by simulation on near-miss traffic in tests/test_calibrate.py, and on real pairs by
bench/calibrate.py.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence

import numpy as np

GRID_STEP = 0.0025
START_SHARE = 0.1


def precision_lower_bound(hits, served, confidence: float):
    """One-sided Clopper-Pearson lower bound on a proportion: ``hits`` right of ``served`` (arrays too)."""
    from scipy.stats import beta

    scalar = np.ndim(hits) == 0 and np.ndim(served) == 0
    hits, served = np.broadcast_arrays(np.atleast_1d(np.asarray(hits, dtype=np.float64)),
                                       np.atleast_1d(np.asarray(served, dtype=np.float64)))
    ok = (hits > 0) & (served > 0)
    bound = np.zeros(hits.shape)
    bound[ok] = beta.ppf(1.0 - confidence, hits[ok], served[ok] - hits[ok] + 1)
    return float(bound[0]) if scalar else bound


def min_served_for(target: float, confidence: float) -> int:
    """Fewest pairs above a threshold whose bound can reach ``target`` (all of them right)."""
    return max(1, math.ceil(math.log(1.0 - confidence) / math.log(target)))


@dataclass(frozen=True)
class Calibration:
    """The chosen threshold and what it promises (``threshold`` None: the target is not supported).

    ``precision_lower_bound`` is the guaranteed one, the target; ``precision_observed`` and
    ``hit_rate`` are measured on the pairs at the threshold.
    """

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


def _check(scores, labels, weights, target_precision: float, confidence: float):
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    weights = np.ones(scores.size) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if scores.shape != labels.shape or scores.shape != weights.shape or scores.size == 0:
        raise ValueError(f"{scores.size} scores, {labels.size} labels, {weights.size} weights")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite")
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError("labels must be 0 or 1")
    if not np.all(np.isfinite(weights) & (weights > 0)):
        raise ValueError("weights must be positive")
    if not 0.0 < target_precision < 1.0:
        raise ValueError("target precision must lie strictly between 0 and 1")
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must lie strictly between 0 and 1")
    return np.clip(scores, -1.0, 1.0), labels.astype(np.int64), weights


def threshold_grid(step: float = GRID_STEP) -> np.ndarray:
    """The candidate thresholds, fixed before any pair is seen: 1 down to -1."""
    return np.round(np.arange(1.0, -1.0 - step / 2, -step), 6)


def _counts_at(scores, labels, weights, grid):
    """Per grid threshold: pairs at or above it, their (weighted) precision, and the effective number of
    pairs behind that precision (Kish: (sum w)^2 / sum w^2; the count itself when unweighted)."""
    order = np.argsort(-scores, kind="mergesort")
    desc, w = scores[order], weights[order]
    cw, cw2, cwy = (np.r_[0.0, np.cumsum(v)] for v in (w, w * w, w * labels[order]))
    served = np.searchsorted(-desc, -grid, side="right")
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(served > 0, cwy[served] / cw[served], 0.0)
        effective = np.where(served > 0, cw[served] ** 2 / cw2[served], 0.0)
    return served, precision, effective, cw[served] / cw[-1], cwy[served] / max(cwy[-1], 1e-300)


def calibrate_with_bound(scores: Sequence[float], labels: Sequence[int], target_precision: float = 0.95,
                         confidence: float = 0.9, step: float = GRID_STEP,
                         weights: Optional[Sequence[float]] = None) -> Calibration:
    """The lowest grid threshold reached by the fixed-sequence test (see the module docstring).

    ``weights`` (``1 / inclusion probability`` of pairs sampled by ``calibrate --suggest``): each test
    uses the weighted precision and the effective number of pairs in the binomial bound, an
    approximation (exact only with equal weights).
    """
    scores, labels, weights = _check(scores, labels, weights, target_precision, confidence)
    n, positives = len(scores), int(labels.sum())
    grid = threshold_grid(step)
    grid = grid[: int((grid >= scores.min()).sum()) + 1]  # down to the first serving every pair, no lower
    served, precision, effective, share, hit_rate = _counts_at(scores, labels, weights, grid)
    needed = min_served_for(target_precision, confidence)
    eligible = ((share >= START_SHARE) & (served >= START_SHARE * n) & (effective >= needed)) | (served == n)
    walk = np.arange(int(np.argmax(eligible)), len(grid))
    bounds = precision_lower_bound(precision[walk] * effective[walk], effective[walk], confidence)
    failed = np.flatnonzero(bounds < target_precision)
    passed = walk[: failed[0]] if failed.size else walk
    tested = int(failed[0] + 1) if failed.size else len(walk)
    if passed.size == 0:
        reason = (f"{n} pairs ({positives} same-question) cannot support precision {target_precision:g} at "
                  f"confidence {confidence:g}: the first threshold tested serves the top {served[walk[0]]} pairs, "
                  f"{precision[walk[0]]:.3f} of them right, lower bound {bounds[0]:.3f}")
        return Calibration(None, target_precision, confidence, None, None, None, 0, n, positives, tested, reason)
    g = int(passed[-1])
    return Calibration(float(grid[g]), target_precision, confidence, target_precision, float(precision[g]),
                       float(hit_rate[g]), int(served[g]), n, positives, tested)


def tightening(scores: Sequence[float], labels: Sequence[int], calibration: Calibration,
               factors: Sequence[int] = (2, 4), weights: Optional[Sequence[float]] = None) -> List[dict]:
    """What ``factor`` times the pairs would buy, if the new ones looked like these: the threshold and
    hit rate the same guarantee would then allow (None: still not supported)."""
    out = []
    for factor in factors:
        more = calibrate_with_bound(np.repeat(scores, factor), np.repeat(labels, factor),
                                    calibration.target_precision, calibration.confidence,
                                    weights=None if weights is None else np.repeat(weights, factor))
        out.append({"factor": factor, "more_pairs": calibration.pairs * (factor - 1),
                    "threshold": more.threshold, "hit_rate": more.hit_rate})
    return out


def curve_with_band(scores: Sequence[float], labels: Sequence[int], confidence: float, points: int = 200,
                    weights: Optional[Sequence[float]] = None) -> dict:
    """Precision (with its pointwise lower bound) and hit rate against the threshold, for the report."""
    scores, labels, weights = _check(scores, labels, weights, 0.5, confidence)
    grid = np.linspace(float(scores.max()), float(scores.min()), points)
    served, precision, effective, _, hit_rate = _counts_at(scores, labels, weights, grid)
    lower = precision_lower_bound(precision * effective, effective, confidence)
    keep = served > 0
    return {"threshold": grid[keep].tolist(), "precision": precision[keep].tolist(),
            "lower_bound": lower[keep].tolist(), "hit_rate": hit_rate[keep].tolist()}
