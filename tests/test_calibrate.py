"""`cachetune calibrate`: a threshold for the user's own traffic with an honest precision bound."""

from __future__ import annotations

import csv
import json
import random

import numpy as np
import pytest

from cachetune.core.evaluate.threshold_bound import (
    calibrate_with_bound,
    informative_pairs,
    min_served_for,
    precision_lower_bound,
)


def test_clopper_pearson_matches_known_values():
    # Known exact bounds: all 45 of 45 right -> 0.1 ** (1/45) at 90% one-sided confidence.
    assert precision_lower_bound(45, 45, 0.9) == pytest.approx(0.1 ** (1 / 45), rel=1e-9)
    assert precision_lower_bound(0, 10, 0.9) == 0.0
    # 90 of 100: the p at which seeing >= 90 right has probability 10% (binomial tail, by bisection)
    from scipy.stats import binom

    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if binom.sf(89, 100, mid) < 0.1 else (lo, mid)
    assert precision_lower_bound(90, 100, 0.9) == pytest.approx(lo, abs=1e-6)
    assert min_served_for(0.95, 0.9) == 45


def test_too_few_pairs_store_nothing():
    cal = calibrate_with_bound([0.9] * 20 + [0.1] * 20, [1] * 20 + [0] * 20, 0.95, 0.9)
    assert cal.threshold is None and "cannot support" in cal.reason


def test_bound_is_honest_across_resamples():
    """Synthetic traffic with a known precision curve: the bound holds in >= 90% of draws."""
    rng = np.random.default_rng(0)
    target, misses, draws = 0.9, 0, 200
    for _ in range(draws):
        labels = rng.random(400) < 0.5
        scores = np.where(labels, rng.normal(0.75, 0.1, 400), rng.normal(0.5, 0.1, 400))
        cal = calibrate_with_bound(scores, labels.astype(int), target, 0.9)
        if cal.threshold is None:
            continue
        big = rng.random(200_000) < 0.5
        big_scores = np.where(big, rng.normal(0.75, 0.1, big.size), rng.normal(0.5, 0.1, big.size))
        served = big_scores >= cal.threshold
        misses += big[served].mean() < target
    assert misses / draws <= 0.1


def test_informative_pairs_sit_around_the_threshold():
    scores = np.linspace(0, 1, 1001)
    picked = informative_pairs(scores, 0.6, 50)
    assert len(picked) == 50
    chosen = scores[picked]
    assert chosen.min() < 0.6 < chosen.max() and np.abs(chosen - 0.6).max() <= 0.051
