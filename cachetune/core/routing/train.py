"""Training and evaluating a router from each domain's prepared queries.

The queries of every domain are split (seeded, per domain) into a fit part and a held-out part.
Nearest centroid and logistic regression are both fitted on the fit part's token means and scored
on the held-out part; the better one is kept (a tie keeps the centroids, the simpler rule).

Confidence lives in each domain's adapter space: a domain is described by ``k`` centroids (k-means
on the sphere over its fit queries' adapter vectors; ``k`` = 1 is their mean direction), and a
query's confidence is its cosine to the nearest of them. Each domain's threshold is the
``max_rejected`` quantile of its fit queries' confidences, each taken out of fold (to the centroids
of the other folds, so no query counts towards its own centroid): about that share of a domain's own
queries would be sent to the base model, and a query further out than that from every domain it
could be routed to is taken to belong to none of them. A thousand out-of-fold cosines pin the 1%
quantile down better than the held-out part's few hundred. ``k`` is chosen per domain among
the ``centroid_choices`` given (default ``CENTROID_CHOICES``: one) on the held-out part
(:func:`choose_centroids`): the fewest of the domain's own
held-out queries sent to the base model plus the fewest of the other domains' held-out queries
(known outsiders, the stand-in for queries of no domain) let in. The accuracy reported on the
held-out part is therefore measured where ``k`` was chosen; a held-out set the router never saw
(`cachetune router evaluate`) is the unbiased figure.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Dict, List, Optional, Sequence

import numpy as np

from cachetune.core.errors import CachetuneError
from cachetune.core.routing.router import (
    Router, nearest_cosines, routed_encode, token_embedding_means, unit_rows,
)

MIN_QUERIES = 10
# Centroids in adapter space are means: a sample this large pins them down, and encoding every
# training query with its adapter would cost minutes on a CPU.
CENTROID_SAMPLE = 1000
FOLDS = 5
# Measured (README, routing): several centroids per domain did not route more of a domain's unseen
# queries right, so one is the default; `router train --centroids 1,4,8,16,32` chooses among these.
CENTROID_CHOICES = (1,)


def split_queries(queries: Dict[str, Sequence[str]], heldout: float, seed: int):
    """Per domain: (fit, held-out) lists, disjoint, in a seeded order."""
    if not 0.0 < heldout < 1.0:
        raise CachetuneError(f"--heldout must be between 0 and 1, not {heldout}")
    rng = np.random.default_rng(seed)
    split = {}
    for domain, texts in queries.items():
        unique = list(dict.fromkeys(t for t in texts if t.strip()))
        if len(unique) < MIN_QUERIES:
            raise CachetuneError(f"domain '{domain}' has {len(unique)} distinct queries; a router needs at least "
                                 f"{MIN_QUERIES} per domain")
        order = rng.permutation(len(unique))
        cut = max(1, int(round(len(unique) * heldout)))
        split[domain] = ([unique[i] for i in order[cut:]], [unique[i] for i in order[:cut]])
    return split


def spherical_centroids(rows: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """``k`` unit centroids of unit ``rows`` (k-means; ``k`` = 1: the mean direction), as (k, dim) rows."""
    k = min(k, len(rows))
    if k <= 1:
        return unit_rows(rows.mean(axis=0, keepdims=True))
    from sklearn.cluster import KMeans

    fitted = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(rows)
    return unit_rows(fitted.cluster_centers_)


def fold_of(n: int, rng, folds: int = FOLDS) -> np.ndarray:
    """A seeded fold number per row, ``folds`` folds (fewer when there are fewer rows)."""
    return rng.permutation(n) % min(folds, n)


def out_of_fold_cosines(rows: np.ndarray, rng=None, folds: int = FOLDS, k: int = 1, seed: int = 0,
                        fold: Optional[np.ndarray] = None) -> np.ndarray:
    """Each unit row's cosine to the nearest of the ``k`` centroids of the rows outside its fold
    (``fold``, else ``folds`` seeded folds drawn from ``rng``)."""
    fold = fold_of(len(rows), rng, folds) if fold is None else fold
    cosines = np.empty(len(rows))
    for part in np.unique(fold):
        inside = fold == part
        cosines[inside] = nearest_cosines(rows[inside], spherical_centroids(rows[~inside], k, seed))
    return cosines


def choose_centroids(rows: np.ndarray, held: np.ndarray, foreign: np.ndarray, max_rejected: float, rng,
                     seed: int, choices: Sequence[int] = CENTROID_CHOICES):
    """``(centroids, threshold, measured)`` for one domain, all rows unit vectors in its adapter's space.

    For each ``k`` in ``choices``: the threshold from the out-of-fold cosines of the fit ``rows``,
    the share of the domain's ``held`` out queries below it (sent to the base model: wrong) and the
    share of ``foreign`` rows (the other domains' held-out queries, which are known not to belong
    here: the stand-in for queries of no domain; None without them) at or above it (kept: wrong).
    The ``k`` with the fewest of both wins; a tie keeps fewer centroids.
    """
    fold = fold_of(len(rows), rng)
    measured = {}
    for k in [k for k in choices if k <= max(1, len(rows) // 8)] or [1]:  # a centroid needs queries of its own
        threshold = float(np.quantile(out_of_fold_cosines(rows, k=k, seed=seed, fold=fold), max_rejected))
        centroids = spherical_centroids(rows, k, seed)
        rejected = float((nearest_cosines(held, centroids) < threshold).mean())
        accepted = float((nearest_cosines(foreign, centroids) >= threshold).mean()) if len(foreign) else None
        measured[k] = (centroids, threshold, rejected, accepted)
    best = min(measured, key=lambda k: (measured[k][2] + (measured[k][3] or 0.0), k))
    report = {str(k): {"threshold": round(t, 6), "heldout_rejected": r, "foreign_accepted": a}
              for k, (_, t, r, a) in measured.items()}
    return measured[best][0], measured[best][1], {"kept": best, "choices": report}


def _labels(domains: List[str], groups: Dict[str, List[str]]):
    texts = [t for d in domains for t in groups[d]]
    labels = np.array([k for k, d in enumerate(domains) for _ in groups[d]])
    return texts, labels


def fit_classifiers(fit: np.ndarray, fit_labels: np.ndarray, held: np.ndarray, held_labels: np.ndarray,
                    n_domains: int, seed: int):
    """Both rules on the same features: ``{kind: (center, weights, bias, held-out accuracy)}``."""
    from sklearn.linear_model import LogisticRegression

    center = fit.mean(axis=0)
    x_fit, x_held = unit_rows(fit - center), unit_rows(held - center)
    rules = {}
    centroids = unit_rows(np.stack([x_fit[fit_labels == k].mean(axis=0) for k in range(n_domains)]))
    rules["centroid"] = (centroids, np.zeros(n_domains))
    model = LogisticRegression(C=1.0, max_iter=2000, random_state=seed).fit(x_fit, fit_labels)
    if n_domains == 2:  # sklearn keeps one row for two classes: score class 1 against a zero row
        weights = np.vstack([np.zeros_like(model.coef_[0]), model.coef_[0]])
        bias = np.array([0.0, model.intercept_[0]])
    else:
        weights, bias = model.coef_, model.intercept_
    rules["logistic"] = (weights, bias)
    out = {}
    for kind, (weights, bias) in rules.items():
        accuracy = float(((x_held @ weights.T + bias).argmax(axis=1) == held_labels).mean())
        out[kind] = (center, np.asarray(weights, dtype=np.float32), np.asarray(bias, dtype=np.float32), accuracy)
    return out


def train_router(multi, queries: Dict[str, Sequence[str]], heldout: float = 0.2, seed: int = 0,
                 max_rejected: float = 0.01, base_threshold: Optional[float] = None,
                 sources: Optional[Dict[str, str]] = None, log=print,
                 centroid_choices: Sequence[int] = CENTROID_CHOICES) -> Router:
    """A router for ``multi``'s domains (a :class:`MultiAdapterModel` labelled by domain).

    ``queries`` maps each loaded domain to its training queries. ``base_threshold`` (the cache
    threshold for queries of no domain) defaults to the strictest base-model threshold the
    adapters' evaluations calibrated.
    """
    domains = sorted(queries)
    if sorted(multi.domains) != domains:
        raise CachetuneError(f"queries are for {', '.join(domains)} but the adapters loaded are for "
                             f"{', '.join(sorted(multi.domains))}")
    if len(domains) < 2:
        raise CachetuneError("a router needs at least two domains")
    if not 0.0 < max_rejected < 0.5:
        raise CachetuneError(f"--max-rejected must be between 0 and 0.5, not {max_rejected}")
    started = time.time()
    split = split_queries(queries, heldout, seed)
    fit_texts, fit_labels = _labels(domains, {d: split[d][0] for d in domains})
    held_texts, held_labels = _labels(domains, {d: split[d][1] for d in domains})
    log(f"token means of {len(fit_texts)} fit + {len(held_texts)} held-out queries")
    fit_x = token_embedding_means(multi.model, fit_texts)
    held_x = token_embedding_means(multi.model, held_texts)
    rules = fit_classifiers(fit_x, fit_labels, held_x, held_labels, len(domains), seed)
    kept = max(rules, key=lambda kind: (rules[kind][3], kind == "centroid"))
    center, weights, bias, _ = rules[kept]

    centroids, thresholds, chosen = {}, {}, {}
    rng = np.random.default_rng(seed)
    for domain in domains:
        fit_part, held_part = split[domain]
        sample = [fit_part[i] for i in sorted(rng.permutation(len(fit_part))[:CENTROID_SAMPLE])]
        # the other domains' held-out queries only matter when there is a k to choose
        foreign = [t for other in domains if other != domain for t in split[other][1]] \
            if len(centroid_choices) > 1 else []
        log(f"{domain}: encoding {len(sample)} + {len(held_part)} + {len(foreign)} other domains' queries "
            f"with {multi.adapters[domain].ref}")
        rows, held = (unit_rows(_encode(multi, part, domain)) for part in (sample, held_part))
        foreign_rows = unit_rows(_encode(multi, foreign, domain)) if foreign else np.zeros((0, rows.shape[1]))
        centroids[domain], thresholds[domain], chosen[domain] = choose_centroids(
            rows, held, foreign_rows, max_rejected, rng, seed, centroid_choices)
        log(f"{domain}: {chosen[domain]['kept']} centroid(s); per k, own held-out queries below the threshold / "
            "other domains' at or above it: " + ", ".join(
                f"{k} {v['heldout_rejected']:.3f}/{_share(v['foreign_accepted'])}"
                for k, v in chosen[domain]["choices"].items()))
    if base_threshold is None:
        base_threshold = base_threshold_of(multi)
    router = Router(
        domains=domains, classifier=kept, center=center, weights=weights, bias=bias, centroids=centroids,
        thresholds=thresholds, base_threshold=base_threshold,
        adapters={d: multi.adapters[d].ref for d in domains},
        base_model=dict(multi.base_model_entry),
    )
    report = evaluate_router(router, multi, {d: split[d][1] for d in domains})
    router.heldout = {
        "queries": {d: len(split[d][1]) for d in domains},
        "classifier_accuracy": {kind: rule[3] for kind, rule in rules.items()},
        "kept": kept,
        "accuracy": report["accuracy"],
        "per_domain": report["per_domain"],
        "max_rejected": max_rejected,
        "centroids": chosen,
    }
    router.info = {"fit_queries": {d: len(split[d][0]) for d in domains}, "heldout_fraction": heldout,
                   "seed": seed, "sources": dict(sources or {}),
                   "trained": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wall_time_s": round(time.time() - started, 1)}
    return router


def _share(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.3f}"


ENCODE_OPTIONS = dict(batch_size=64, convert_to_numpy=True, show_progress_bar=False)


def _encode(multi, texts: Sequence[str], domain: Optional[str]) -> np.ndarray:
    return np.asarray(multi.encode(list(texts), domain=domain, **ENCODE_OPTIONS))


def base_threshold_of(multi) -> Optional[float]:
    """The strictest (highest) base-model threshold among the loaded adapters' evaluations, if any."""
    found = [t for t in (multi.base_thresholds.get(d) for d in multi.domains) if t is not None]
    return max(found) if found else None


def evaluate_router(router: Router, multi, queries: Dict[str, Sequence[str]],
                    outside: Optional[Dict[str, Sequence[str]]] = None) -> dict:
    """Route labelled queries: accuracy over ``queries`` (a query sent to the base model counts as
    wrong), where each set went, and for ``outside`` (queries of no routed domain) the share that
    went to the base model."""
    def encoders_for():
        return {d: (lambda texts, d=d: _encode(multi, texts, d)) for d in router.domains}

    def where(texts: Sequence[str]) -> Dict[str, int]:
        routed = routed_encode(router, multi.model, encoders_for(), lambda texts: _encode(multi, texts, None),
                               texts, mixed_encode=lambda texts, domains: np.asarray(
                                   multi.encode_mixed(list(texts), domains, **ENCODE_OPTIONS)))
        return dict(Counter(domain or "base" for domain in routed.domains))

    per_domain, right, total = {}, 0, 0
    for domain, texts in queries.items():
        if domain not in router.domains:
            raise CachetuneError(f"{router.label} does not route to '{domain}' (it routes to "
                                 f"{', '.join(router.domains)}); pass its queries with --outside")
        counts = where(texts)
        per_domain[domain] = {"queries": len(texts), "routed": counts,
                              "accuracy": counts.get(domain, 0) / len(texts)}
        right += counts.get(domain, 0)
        total += len(texts)
    report = {"accuracy": right / total if total else None, "per_domain": per_domain}
    if outside:
        report["outside"] = {}
        for name, texts in outside.items():
            counts = where(texts)
            report["outside"][name] = {"queries": len(texts), "routed": counts,
                                       "to_base": counts.get("base", 0) / len(texts)}
    return report
