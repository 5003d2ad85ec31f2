"""`cachetune calibrate`: a threshold for the user's own traffic with an honest precision bound."""

from __future__ import annotations

import csv
import json
import random

import numpy as np
import pytest

from cachetune.core.evaluate.label_sampling import inclusion_probabilities, precision_threshold, systematic_sample
from cachetune.core.evaluate.threshold_bound import calibrate_with_bound, min_served_for, precision_lower_bound


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


def _near_miss_traffic(rng, n):
    """Half same-question pairs ~ N(0.72, 0.08); 1% of the others are near misses scoring 0.9-1.0 (above
    almost every right pair), the rest ~ N(0.45, 0.1)."""
    labels = rng.random(n) < 0.5
    near = ~labels & (rng.random(n) < 0.01)
    scores = np.where(labels, rng.normal(0.72, 0.08, n), rng.normal(0.45, 0.1, n))
    scores[near] = rng.uniform(0.9, 1.0, near.sum())
    return scores, labels.astype(int)


def _near_miss_precision(t):
    from scipy.stats import norm

    right = 0.5 * norm.sf(t, 0.72, 0.08)
    wrong = 0.5 * 0.01 * np.clip((1.0 - t) / 0.1, 0, 1) + 0.5 * 0.99 * norm.sf(t, 0.45, 0.1)
    return right / (right + wrong)


def test_near_misses_at_the_top_do_not_stop_the_search():
    """A few wrong pairs score highest; precision is on target lower down: a threshold is certified,
    and its true (analytic) precision is below target in at most 10% of draws."""
    rng = np.random.default_rng(1)
    target, draws, certified, misses, wrong_on_top = 0.9, 300, 0, 0, 0
    for _ in range(draws):
        scores, labels = _near_miss_traffic(rng, 1000)
        wrong_on_top += labels[np.argsort(-scores)[:22]].min() == 0
        cal = calibrate_with_bound(scores, labels, target, 0.9)
        if cal.threshold is None:
            continue
        certified += 1
        misses += _near_miss_precision(cal.threshold) < target
        assert cal.precision_lower_bound == target  # the guarantee is the target, not the bound at one threshold
    assert _near_miss_precision(0.95) < 0.5 and _near_miss_precision(0.65) > 0.92  # the traffic is as described
    assert wrong_on_top >= 0.95 * draws  # a search from the top would stop at once
    assert certified >= 0.5 * draws
    assert misses <= 0.1 * draws


def test_suggested_sample_has_the_stated_inclusion_probabilities():
    """Each candidate is drawn as often as its stated probability; most mass sits near the threshold."""
    rng = np.random.default_rng(3)
    scores = np.sort(rng.uniform(0, 1, 300))
    p = inclusion_probabilities(scores, 0.6, 30)
    assert p.sum() == pytest.approx(30) and p.max() <= 1.0 and p.min() > 0
    assert np.abs(scores[np.argmax(p)] - 0.6) < 0.01 and p[np.abs(scores - 0.6) < 0.1].sum() > 0.4 * 30
    drawn = np.zeros(len(scores))
    for seed in range(3000):
        picked = systematic_sample(scores, p, seed)
        assert len(picked) == 30 and len(set(picked.tolist())) == 30
        drawn[picked] += 1
    assert np.abs(drawn / 3000 - p).max() < 0.03


def test_weighting_labels_by_inverse_probability_removes_the_bias():
    """Precision above a threshold, estimated from suggested pairs: weighted by 1/p it matches the pool's
    (counted directly); unweighted it is far too low (near misses over-represented)."""
    rng = np.random.default_rng(4)
    labels = rng.random(4000) < 0.5
    scores = np.where(labels, rng.normal(0.75, 0.1, 4000), rng.normal(0.5, 0.1, 4000))
    t = 0.62
    truth = labels[scores >= t].mean()
    p = inclusion_probabilities(scores, t, 200)
    weighted, plain = [], []
    for seed in range(300):
        picked = systematic_sample(scores, p, seed)
        above = picked[scores[picked] >= t]
        w = 1 / p[above]
        weighted.append((w * labels[above]).sum() / w.sum())
        plain.append(labels[above].mean())
    assert abs(np.mean(weighted) - truth) < 0.01
    assert truth - np.mean(plain) > 0.03


def test_precision_threshold_matches_a_direct_scan():
    rng = np.random.default_rng(5)
    scores = rng.random(300).round(2)
    labels = (rng.random(300) < scores).astype(int)
    w = rng.uniform(0.5, 3, 300)
    ok = [t for t in np.unique(scores) if (w * labels)[scores >= t].sum() / w[scores >= t].sum() >= 0.7]
    assert precision_threshold(scores, labels, 0.7, w) == pytest.approx(min(ok))


def test_suggest_candidates_are_each_querys_nearest_neighbours_once():
    """The pairs `--suggest` samples from: every query with its k nearest others (sklearn's exact
    search as the reference), each unordered pair once, scored by its cosine."""
    from sklearn.neighbors import NearestNeighbors

    from cachetune.core.evaluate.calibrate import _candidate_pairs

    emb = np.random.default_rng(3).normal(size=(60, 12)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    pairs = _candidate_pairs(emb, 3)
    keys = [(i, j) for i, j, _ in pairs]
    _, found = NearestNeighbors(n_neighbors=4, metric="cosine", algorithm="brute").fit(emb).kneighbors(emb)
    expected = {(min(i, int(j)), max(i, int(j))) for i in range(len(emb)) for j in [j for j in found[i] if j != i][:3]}
    assert len(keys) == len(set(keys)) and set(keys) == expected
    for i, j, score in pairs:
        assert i < j and score == pytest.approx(float(emb[i] @ emb[j]), abs=1e-5)
