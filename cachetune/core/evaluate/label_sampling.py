"""Which candidate pairs to label (`calibrate --suggest`), and how to read their labels without bias.

Labelling only the pairs that score near the current threshold tells the most about where the
threshold should be, but a precision computed from them as if they were the traffic is wrong: near
misses are over-represented, so precision looks worse than it is (measured: thresholds 7-11 times
further off than from random pairs). So the pairs are *sampled* with known inclusion
probabilities, high near the current threshold and never zero (a floor), and each label then
counts ``1 / probability`` pairs of traffic (inverse-probability weighting): the weighted precision
above any threshold is an unbiased-ratio estimate of the traffic's.

The sample is systematic over the candidates sorted by score (one random start, fixed size, each
candidate included with exactly its probability), so every part of the score range is represented
in proportion to its probability mass.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

BANDWIDTH = 0.5  # of the candidates' score standard deviation
FLOOR = 0.3  # relative weight far from the threshold: no pair is out of reach, weights stay within 1:4


def inclusion_probabilities(scores: Sequence[float], threshold: float, n: int, *, bandwidth: float = BANDWIDTH,
                            floor: float = FLOOR) -> np.ndarray:
    """Probabilities summing to ``n`` (each at most 1), proportional to ``floor`` plus a Gaussian bump of
    width ``bandwidth`` score standard deviations around ``threshold``."""
    scores = np.asarray(scores, dtype=np.float64)
    if n >= len(scores):
        return np.ones(len(scores))
    width = max(bandwidth * float(scores.std()), 1e-6)
    weight = floor + np.exp(-0.5 * ((scores - threshold) / width) ** 2)
    p = np.zeros(len(scores))
    capped = np.zeros(len(scores), dtype=bool)
    while True:  # share n out; any probability that would pass 1 is capped and the rest shared again
        left = n - capped.sum()
        p[~capped] = left * weight[~capped] / weight[~capped].sum()
        over = ~capped & (p >= 1.0)
        if not over.any():
            break
        p[over], capped = 1.0, capped | over
    return np.minimum(p, 1.0)


def systematic_sample(scores: Sequence[float], probabilities: Sequence[float], seed: int = 0) -> np.ndarray:
    """Indices of a systematic sample along the score order: candidate i is in it with probability
    ``probabilities[i]``; as many as the probabilities sum to (rounded)."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(scores, kind="mergesort")
    cum = np.cumsum(np.asarray(probabilities, dtype=np.float64)[order])
    start = np.random.default_rng(seed).random()
    marks = np.floor(cum - start)
    taken = marks > np.r_[np.floor(-start), marks[:-1]]
    return np.sort(order[taken])


def precision_threshold(scores: Sequence[float], labels: Sequence[int], target_precision: float,
                        weights: Optional[Sequence[float]] = None) -> Optional[float]:
    """The lowest threshold whose (weighted) precision reaches the target: the point estimate, without a
    guarantee (None: no threshold does)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    weights = np.ones(len(scores)) if weights is None else np.asarray(weights, dtype=np.float64)
    order = np.argsort(-scores, kind="mergesort")
    s, y, w = scores[order], labels[order], weights[order]
    precision = np.cumsum(w * y) / np.cumsum(w)
    ends = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # ties: one threshold serves them all
    ok = np.flatnonzero(precision[ends] >= target_precision - 1e-12)
    return float(s[ends[ok[-1]]]) if ok.size else None
