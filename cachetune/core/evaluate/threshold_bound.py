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
threshold serving ``start_count`` pairs (a tenth of them, and at least the fewest whose bound could
reach the target). Starting at the very top would stop at once on near-miss traffic, where one of
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


def start_count(pairs: int, target: float, confidence: float) -> int:
    """How many of the top-scoring pairs the first tested threshold serves (see the module docstring)."""
    return min(pairs, max(min_served_for(target, confidence), math.ceil(START_SHARE * pairs)))


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


def _check(scores, labels, target_precision: float, confidence: float):
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape or scores.size == 0:
        raise ValueError(f"{scores.size} scores but {labels.size} labels")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite")
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError("labels must be 0 or 1")
    if not 0.0 < target_precision < 1.0:
        raise ValueError("target precision must lie strictly between 0 and 1")
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must lie strictly between 0 and 1")
    return np.clip(scores, -1.0, 1.0), labels.astype(np.int64)


def threshold_grid(step: float = GRID_STEP) -> np.ndarray:
    """The candidate thresholds, fixed before any pair is seen: 1 down to -1."""
    return np.round(np.arange(1.0, -1.0 - step / 2, -step), 6)


def calibrate_with_bound(scores: Sequence[float], labels: Sequence[int], target_precision: float = 0.95,
                         confidence: float = 0.9, step: float = GRID_STEP) -> Calibration:
    """The lowest grid threshold reached by the fixed-sequence test (see the module docstring)."""
    scores, labels = _check(scores, labels, target_precision, confidence)
    n, positives = len(scores), int(labels.sum())
    order = np.argsort(-scores, kind="mergesort")
    desc, cum_hits = scores[order], np.r_[0, np.cumsum(labels[order])]
    grid = threshold_grid(step)
    grid = grid[: int((grid >= desc[-1]).sum()) + 1]  # down to the first serving every pair, no lower
    served = np.searchsorted(-desc, -grid, side="right")
    first = start_count(n, target_precision, confidence)
    walk = np.flatnonzero(served >= first)
    if walk.size:  # always, unless no grid point lies at or below the scores
        bounds = precision_lower_bound(cum_hits[served[walk]], served[walk], confidence)
        failed = np.flatnonzero(bounds < target_precision)
        passed = walk[: failed[0]] if failed.size else walk
    else:
        bounds, failed, passed = np.zeros(0), np.zeros(0, dtype=int), walk
    tested = int(min(walk.size, failed[0] + 1 if failed.size else walk.size))
    if passed.size == 0:
        k = int(served[walk[0]]) if walk.size else n
        seen = cum_hits[k] / k if k else 0.0
        reason = (f"{n} pairs ({positives} same-question) cannot support precision {target_precision:g} at "
                  f"confidence {confidence:g}: the first threshold tested serves the top {k} pairs, "
                  f"{seen:.3f} of them right, lower bound {bounds[0] if bounds.size else 0.0:.3f}")
        return Calibration(None, target_precision, confidence, None, None, None, 0, n, positives, tested, reason)
    g = int(passed[-1])
    k, hits = int(served[g]), int(cum_hits[served[g]])
    return Calibration(float(grid[g]), target_precision, confidence, target_precision, hits / k,
                       hits / positives if positives else 0.0, k, n, positives, tested)


def tightening(scores: Sequence[float], labels: Sequence[int], calibration: Calibration,
               factors: Sequence[int] = (2, 4)) -> List[dict]:
    """What ``factor`` times the pairs would buy, if the new ones looked like these: the threshold and
    hit rate the same guarantee would then allow (None: still not supported)."""
    out = []
    for factor in factors:
        more = calibrate_with_bound(np.repeat(scores, factor), np.repeat(labels, factor),
                                    calibration.target_precision, calibration.confidence)
        out.append({"factor": factor, "more_pairs": calibration.pairs * (factor - 1),
                    "threshold": more.threshold, "hit_rate": more.hit_rate})
    return out


def curve_with_band(scores: Sequence[float], labels: Sequence[int], confidence: float,
                    points: int = 200) -> dict:
    """Precision (with its pointwise lower bound) and hit rate against the threshold, for the report."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    positives = max(int(labels.sum()), 1)
    grid = np.linspace(float(scores.min()), float(scores.max()), points)
    above = scores[None, :] >= grid[:, None]
    served = above.sum(axis=1)
    hits = (above & (labels[None, :] == 1)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(served > 0, hits / np.maximum(served, 1), np.nan)
    lower = np.where(served > 0, precision_lower_bound(hits, served, confidence), np.nan)
    return {"threshold": grid.tolist(), "precision": precision.tolist(), "lower_bound": lower.tolist(),
            "hit_rate": (hits / positives).tolist()}


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
