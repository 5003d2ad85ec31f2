"""Evaluation metrics for a semantic cache's embedder, in plain numpy.

Scores are cosine similarities of normalised embeddings; a cache *hits* when the score is
``>= threshold``. Label 1 means the two texts ask the same question (a hit is right), label 0
that they differ (a hit would serve a wrong answer: a *false hit*).

Everything works on the distinct score values as candidate thresholds, the way scikit-learn
does, so average precision, ROC AUC and the precision-recall curve agree with
``sklearn.metrics`` exactly (the tests check it). The bootstrap reuses the one sort of the
scores and only re-weights rows, so 1,000 resamples of a few thousand pairs take well under a
second.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

# The thresholds of the cache simulation: 0.50, 0.51, ..., 0.99.
CACHE_THRESHOLDS = tuple(round(0.50 + 0.01 * i, 2) for i in range(50))
TRIPLET_METRICS = ("margin", "pos", "neg", "accuracy")
PAIR_METRICS = ("ap", "auc", "best_f1", "hit_rate", "false_hit_rate")


def triplet_metrics(pos_scores, neg_scores) -> Dict[str, float]:
    """margin = mean(cos(a,p) - cos(a,n)); pos / neg = the means; accuracy = share with pos > neg."""
    pos = np.asarray(pos_scores, dtype=np.float64).ravel()
    neg = np.asarray(neg_scores, dtype=np.float64).ravel()
    if pos.shape != neg.shape:
        raise ValueError(f"{pos.size} positive scores but {neg.size} negative scores")
    if pos.size == 0:
        raise ValueError("no triplets")
    return {
        "margin": float(np.mean(pos - neg)),
        "pos": float(np.mean(pos)),
        "neg": float(np.mean(neg)),
        "accuracy": float(np.mean(pos > neg)),
        "n": int(pos.size),
    }


def recall_at_1(queries, targets, gold: Sequence[int]) -> float:
    """Share of ``queries`` rows (normalised embeddings) whose most similar ``targets`` row is
    ``gold[i]``; on ties the first such row counts."""
    q = np.asarray(queries, dtype=np.float32)
    t = np.asarray(targets, dtype=np.float32)
    if q.shape[0] != len(gold):
        raise ValueError(f"{q.shape[0]} queries but {len(gold)} gold targets")
    if q.shape[0] == 0:
        raise ValueError("no queries")
    return float(np.mean((q @ t.T).argmax(axis=1) == np.asarray(gold)))


@dataclass(frozen=True)
class RankedPairs:
    """Pairs sorted by score, descending, with the end of each run of equal scores.

    ``thresholds[g]`` is the g-th distinct score (descending); ``tp[g]`` / ``fp[g]`` count the
    positives / negatives scoring ``>= thresholds[g]``.
    """

    scores: np.ndarray  # sorted descending
    labels: np.ndarray  # in the same order
    ends: np.ndarray  # index of the last row of each distinct score
    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    positives: int
    negatives: int


def rank_pairs(scores, labels) -> RankedPairs:
    """Validate and sort; both labels must be present (AP and AUC need both)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores but {y.size} labels")
    if s.size == 0:
        raise ValueError("no pairs")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 or 1")
    y = y.astype(np.int64)
    positives = int(y.sum())
    negatives = int(y.size - positives)
    if positives == 0 or negatives == 0:
        raise ValueError(f"pairs need both labels (got {positives} with label 1 and {negatives} with label 0)")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    ends = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tp = np.cumsum(y)[ends]
    fp = (ends + 1) - tp
    return RankedPairs(s, y, ends, s[ends], tp, fp, positives, negatives)


def precision_recall(ranked: RankedPairs):
    """Precision, recall and false-hit rate at every distinct threshold (descending)."""
    precision = ranked.tp / (ranked.tp + ranked.fp)
    recall = ranked.tp / ranked.positives
    fhr = ranked.fp / ranked.negatives
    return precision, recall, fhr


def average_precision(ranked: RankedPairs) -> float:
    """sum over thresholds of (recall step) x precision, no interpolation (as scikit-learn)."""
    precision, recall, _ = precision_recall(ranked)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(ranked: RankedPairs) -> float:
    """Area under the ROC curve (trapezoids; tied scores count one half)."""
    _, tpr, fpr = precision_recall(ranked)
    tpr, fpr = np.r_[0.0, tpr], np.r_[0.0, fpr]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def best_f1(ranked: RankedPairs) -> Dict[str, float]:
    """The threshold with the highest F1 (the highest threshold among ties)."""
    precision, recall, _ = precision_recall(ranked)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    g = int(np.argmax(f1))
    return {"best_f1": float(f1[g]), "best_threshold": float(ranked.thresholds[g]),
            "precision": float(precision[g]), "recall": float(recall[g])}


def calibrate(ranked: RankedPairs, target_precision: float) -> Dict[str, Optional[float]]:
    """The lowest threshold whose precision is >= ``target_precision``, and the rates there.

    Precision is not monotone in the threshold; the lowest qualifying threshold is the one
    with the most hits among those that keep precision on target. When no threshold reaches
    it, the threshold is ``None`` and the cache never hits (hit rate 0).
    """
    _check_target(target_precision)
    precision, recall, fhr = precision_recall(ranked)
    ok = np.flatnonzero(precision >= target_precision - 1e-12)
    if ok.size == 0:
        return {"calibrated_threshold": None, "hit_rate": 0.0, "false_hit_rate": 0.0,
                "precision_at_threshold": None, "target_reached": False}
    g = int(ok[-1])
    return {"calibrated_threshold": float(ranked.thresholds[g]), "hit_rate": float(recall[g]),
            "false_hit_rate": float(fhr[g]), "precision_at_threshold": float(precision[g]),
            "target_reached": True}


def rates_at(ranked: RankedPairs, threshold: float) -> Dict[str, Optional[float]]:
    """Hit rate, false-hit rate, precision and share of lookups that hit at ``score >= threshold``."""
    hits = int(np.searchsorted(-ranked.scores, -threshold, side="right"))
    tp = int(ranked.labels[:hits].sum())
    fp = hits - tp
    return {
        "threshold": float(threshold),
        "hit_rate": tp / ranked.positives,
        "false_hit_rate": fp / ranked.negatives,
        "precision": (tp / hits) if hits else None,
        "hits": hits / ranked.scores.size,
    }


def cache_simulation(ranked: RankedPairs, thresholds: Sequence[float] = CACHE_THRESHOLDS) -> List[dict]:
    """:func:`rates_at` for each threshold (0.50 .. 0.99 by default)."""
    return [rates_at(ranked, t) for t in thresholds]


def bootstrap(ranked: RankedPairs, target_precision: float, n: int = 1000, seed: int = 0,
              level: float = 0.95, chunk: int = 100) -> Dict[str, Optional[list]]:
    """Percentile intervals for AP, and for the hit rate and threshold of the calibration.

    Stratified: each resample draws ``positives`` rows from the positives and ``negatives``
    from the negatives, with replacement, so the class balance (which precision depends on)
    stays that of the set. Each resample recalibrates its own threshold, so the hit-rate
    interval includes the uncertainty of the threshold itself.
    """
    _check_target(target_precision)
    if n <= 0:
        return {"n": 0, "ap": None, "hit_rate": None, "calibrated_threshold": None}
    rng = np.random.default_rng(seed)
    pos_idx = np.flatnonzero(ranked.labels == 1)
    neg_idx = np.flatnonzero(ranked.labels == 0)
    aps, hits, thresholds = [], [], []
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        weights = np.zeros((size, ranked.scores.size), dtype=np.float64)
        weights[:, pos_idx] = rng.multinomial(pos_idx.size, np.full(pos_idx.size, 1.0 / pos_idx.size), size=size)
        weights[:, neg_idx] = rng.multinomial(neg_idx.size, np.full(neg_idx.size, 1.0 / neg_idx.size), size=size)
        ap, hit, thr = weighted_stats(ranked, weights, target_precision)
        aps.append(ap)
        hits.append(hit)
        thresholds.append(thr)
    alpha = (1.0 - level) / 2 * 100
    ap_all, hit_all, thr_all = np.concatenate(aps), np.concatenate(hits), np.concatenate(thresholds)
    thr_ok = thr_all[np.isfinite(thr_all)]
    return {
        "n": int(n),
        "level": level,
        "ap": [float(v) for v in np.percentile(ap_all, [alpha, 100 - alpha])],
        "hit_rate": [float(v) for v in np.percentile(hit_all, [alpha, 100 - alpha])],
        "calibrated_threshold": ([float(v) for v in np.percentile(thr_ok, [alpha, 100 - alpha])]
                                 if thr_ok.size else None),
        "target_reached_share": float(thr_ok.size / n),
    }


def weighted_stats(ranked: RankedPairs, weights: np.ndarray, target_precision: float):
    """AP, calibrated hit rate and threshold for each row of ``weights`` (row counts per pair).

    A row of weights is a resample: pair i counted ``weights[r, i]`` times. The ranking of
    the full set is reused, so no resample is sorted again.
    """
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    tp = np.cumsum(weights * ranked.labels, axis=1)[:, ranked.ends]
    total = np.cumsum(weights, axis=1)[:, ranked.ends]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(total > 0, tp / total, 0.0)
        recall = tp / tp[:, -1:]
    # Thresholds no resampled row sits at add no recall, so they add nothing to AP.
    steps = np.diff(np.concatenate([np.zeros((weights.shape[0], 1)), recall], axis=1), axis=1)
    ap = np.sum(steps * precision, axis=1)
    # A threshold is a score some resampled row has: a distinct score whose rows all drew
    # weight 0 is absent from the resample, and calibrating on it would pick a score no row has.
    present = np.diff(np.concatenate([np.zeros((weights.shape[0], 1)), total], axis=1), axis=1) > 0
    ok = (precision >= target_precision - 1e-12) & present
    last = ok.shape[1] - 1 - np.argmax(ok[:, ::-1], axis=1)
    reached = ok.any(axis=1)
    rows = np.arange(weights.shape[0])
    hit = np.where(reached, recall[rows, last], 0.0)
    thr = np.where(reached, ranked.thresholds[last], np.nan)
    return ap, hit, thr


def pair_metrics(scores, labels, target_precision: float = 0.95, n_bootstrap: int = 1000,
                 seed: int = 0) -> dict:
    """All pair metrics of one model on one set (see the README's definitions)."""
    ranked = rank_pairs(scores, labels)
    out: dict = {"n": int(ranked.scores.size), "positives": ranked.positives, "negatives": ranked.negatives,
                 "ap": average_precision(ranked), "auc": roc_auc(ranked)}
    f1 = best_f1(ranked)
    out.update(best_f1=f1["best_f1"], best_threshold=f1["best_threshold"],
               precision_at_best_f1=f1["precision"], recall_at_best_f1=f1["recall"])
    out["target_precision"] = float(target_precision)
    out.update(stored_threshold(ranked, target_precision, seed))
    out["ci95"] = bootstrap(ranked, target_precision, n=n_bootstrap, seed=seed)
    out["mean_pos"] = float(np.mean(ranked.scores[ranked.labels == 1]))
    out["mean_neg"] = float(np.mean(ranked.scores[ranked.labels == 0]))
    out["cache_simulation"] = cache_simulation(ranked)
    return out


def stored_threshold(ranked: RankedPairs, target_precision: float, seed: int = 0) -> dict:
    """The threshold a cache is given, chosen out of sample (:mod:`.calibration`), the rates it
    gives on the whole set, and ``calibration_retention``: what it and the in-sample choice keep
    on unseen pairs. No threshold (and hit rate 0) when unseen pairs cannot support the target."""
    from cachetune.core.evaluate.calibration import out_of_sample_threshold

    chosen = out_of_sample_threshold(ranked.scores, ranked.labels, target_precision, seed=seed)
    threshold = chosen["threshold"]
    out = {"calibrated_threshold": threshold, "in_sample_threshold": chosen["in_sample_threshold"],
           "target_reached": threshold is not None, "hit_rate": 0.0, "false_hit_rate": 0.0,
           "precision_at_threshold": None}
    if threshold is not None:
        rates = rates_at(ranked, threshold)
        out.update(hit_rate=rates["hit_rate"], false_hit_rate=rates["false_hit_rate"],
                   precision_at_threshold=rates["precision"])
    out["calibration_retention"] = {k: v for k, v in chosen.items() if k not in ("target_precision",)}
    return out


def curves(scores, labels) -> Dict[str, list]:
    """The precision-recall and hit / false-hit curves, for plots (thresholds descending)."""
    ranked = rank_pairs(scores, labels)
    precision, recall, fhr = precision_recall(ranked)
    return {"thresholds": ranked.thresholds.tolist(), "precision": precision.tolist(),
            "recall": recall.tolist(), "false_hit_rate": fhr.tolist()}


def relative_improvement(adapter: Optional[float], base: Optional[float]) -> Optional[float]:
    """(adapter - base) / |base|; ``None`` when either is missing or base is 0."""
    if adapter is None or base is None or base == 0:
        return None
    return float((adapter - base) / abs(base))


def _check_target(target_precision: float) -> None:
    if not 0.0 < target_precision <= 1.0:
        raise ValueError(f"target precision must be in (0, 1], got {target_precision}")
