"""Training and evaluating a router from each domain's prepared queries.

The queries of every domain are split (seeded, per domain) into a fit part and a held-out part.
Nearest centroid and logistic regression are both fitted on the fit part's token means and scored
on the held-out part; the better one is kept (a tie keeps the centroids, the simpler rule). Each
domain's confidence threshold is the ``max_rejected`` quantile of its fit queries' cosine to its
centroid in its adapter's space, each cosine taken out of fold (to the centroid of the other folds,
so no query counts towards its own centroid): about that share of a domain's own queries would be
sent to the base model, and a query further out than that from every domain it could be routed to
is taken to belong to none of them. A thousand out-of-fold cosines pin the 1% quantile down better
than the held-out part's few hundred, and the held-out part then stays unseen by every choice, so
the accuracy reported on it is not tuned to it.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Dict, List, Optional, Sequence

import numpy as np

from cachetune.core.errors import CachetuneError
from cachetune.core.routing.router import Router, routed_encode, token_embedding_means, unit_rows

MIN_QUERIES = 10
# Centroids in adapter space are means: a sample this large pins them down, and encoding every
# training query with its adapter would cost minutes on a CPU.
CENTROID_SAMPLE = 1000
FOLDS = 5


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


def out_of_fold_cosines(rows: np.ndarray, rng, folds: int = FOLDS) -> np.ndarray:
    """Each unit row's cosine to the mean of the rows outside its fold (``folds`` seeded folds)."""
    fold = rng.permutation(len(rows)) % min(folds, len(rows))
    total = rows.sum(axis=0)
    cosines = np.empty(len(rows))
    for k in np.unique(fold):
        inside = fold == k
        cosines[inside] = rows[inside] @ unit_rows(total - rows[inside].sum(axis=0))
    return cosines


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
                 sources: Optional[Dict[str, str]] = None, log=print) -> Router:
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

    centroids, thresholds = {}, {}
    rng = np.random.default_rng(seed)
    for domain in domains:
        fit_part = split[domain][0]
        sample = [fit_part[i] for i in sorted(rng.permutation(len(fit_part))[:CENTROID_SAMPLE])]
        log(f"{domain}: encoding {len(sample)} queries with {multi.adapters[domain].ref}")
        rows = unit_rows(_encode(multi, sample, domain))
        centroids[domain] = unit_rows(rows.mean(axis=0))
        thresholds[domain] = float(np.quantile(out_of_fold_cosines(rows, rng), max_rejected))
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
    }
    router.info = {"fit_queries": {d: len(split[d][0]) for d in domains}, "heldout_fraction": heldout,
                   "seed": seed, "sources": dict(sources or {}),
                   "trained": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wall_time_s": round(time.time() - started, 1)}
    return router


def _encode(multi, texts: Sequence[str], domain: Optional[str]) -> np.ndarray:
    return np.asarray(multi.encode(list(texts), domain=domain, batch_size=64, convert_to_numpy=True,
                                   show_progress_bar=False))


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
                               texts)
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
