"""A trained router: which registered domain a query belongs to, or none.

Two steps, both cheap next to the encode they steer:

1. **Domain**: a linear rule (nearest centroid or logistic regression, whichever won on held-out
   queries) on the mean of the base model's input token embeddings over the query's tokens (the
   embedding layer's lookup only, no transformer layer).
2. **Confidence**: the query is encoded with the chosen domain's adapter (the encode the cache needs
   anyway), and its cosine to the nearest of that domain's centroids in the adapter's space (one or
   several per domain: a varied domain is several clusters) must reach the domain's threshold. Below
   it the query belongs to no registered domain: it is encoded with the base model and compared with
   the base threshold.

A router is one JSON file (vectors as lists of floats, never a pickle); see :meth:`Router.to_json`.
Format 1 held one centroid per domain; format 2 a list of centroids per domain. Both load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from cachetune.core.errors import CachetuneError

ROUTER_FORMAT = 2
FEATURES = "base-token-embedding-mean"
AUTO = "auto"


def unit_rows(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return rows / np.where(norms == 0, 1.0, norms)


def nearest_cosines(rows: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Each unit row's cosine to the nearest of the unit ``centroids`` rows."""
    return (rows @ np.atleast_2d(centroids).T).max(axis=1)


def token_embedding_means(model, texts: Sequence[str]) -> np.ndarray:
    """One unit row per text: the mean of ``model``'s input token embeddings over its tokens.

    ``model`` is a SentenceTransformer whose ``[0]`` module is the transformer (peft-wrapped or not:
    LoRA leaves the embedding layer alone). Special tokens are left out; texts are cut at the
    model's ``max_seq_length`` like the encode that follows.
    """
    import torch

    table = model[0].auto_model.get_input_embeddings().weight
    ids = model.tokenizer(list(texts), add_special_tokens=False, truncation=True,
                          max_length=int(model.max_seq_length), verbose=False)["input_ids"]
    lengths = torch.tensor([max(len(row), 1) for row in ids])
    flat = torch.tensor([i for row in ids for i in row] or [0], dtype=torch.long)
    owner = torch.repeat_interleave(torch.arange(len(ids)), torch.tensor([len(row) for row in ids]))
    with torch.no_grad():
        sums = torch.zeros(len(ids), table.shape[1], dtype=table.dtype, device=table.device)
        if len(owner):
            sums.index_add_(0, owner.to(table.device), table[flat.to(table.device)])
        means = sums / lengths.to(table.device).unsqueeze(1).to(table.dtype)
    return unit_rows(means.float().cpu().numpy())


def _centroid_rows(value, version: int) -> np.ndarray:
    """A domain's centroids as (k, dim) rows: format 1 stored one vector, format 2 a list of them."""
    rows = np.asarray(value, dtype=np.float32)
    if rows.ndim != (1 if version == 1 else 2) or not rows.size:
        raise ValueError(f"a domain's centroids must be {'a vector' if version == 1 else 'a list of vectors'}")
    return rows.reshape(-1, rows.shape[-1])


@dataclass
class Router:
    """Routes texts to ``domains`` (see the module docstring)."""

    domains: List[str]
    classifier: str  # "centroid" or "logistic": what ``weights``/``bias`` hold
    center: np.ndarray  # subtracted from the token means before the linear rule
    weights: np.ndarray  # (domains, dim): a score per domain is features @ weights.T + bias
    bias: np.ndarray
    centroids: Dict[str, np.ndarray]  # per domain (k, dim): unit rows in its adapter's space
    thresholds: Dict[str, float]  # per domain: the least cosine to its nearest centroid that stays in it
    base_threshold: Optional[float]  # the cache threshold for queries of no registered domain
    adapters: Dict[str, str]  # domain -> the adapter ``name@version`` the centroids were computed with
    base_model: dict  # {"id", "weights_sha256"}
    heldout: dict = field(default_factory=dict)  # what the held-out split measured
    info: dict = field(default_factory=dict)  # training data, options, time
    ref: Optional[str] = None  # name@version once stored in a registry

    @property
    def label(self) -> str:
        return f"router {self.ref}" if self.ref else "the router"

    def choose(self, features: np.ndarray) -> np.ndarray:
        """The index (into ``domains``) of the best-scoring domain for each row of token means."""
        scores = unit_rows(features - self.center) @ self.weights.T + self.bias
        return scores.argmax(axis=1)

    def confidence(self, domain: str, vectors: np.ndarray) -> np.ndarray:
        """Cosine of each of ``domain``'s adapter vectors to the nearest of the domain's centroids."""
        return nearest_cosines(unit_rows(np.asarray(vectors, dtype=np.float32)), self.centroids[domain])

    def threshold_for(self, domain: Optional[str], adapter_threshold: Optional[float]) -> Optional[float]:
        return self.base_threshold if domain is None else adapter_threshold

    # -- the file ----------------------------------------------------------------------
    def to_json(self) -> dict:
        def floats(values) -> list:
            return [round(float(v), 7) for v in np.asarray(values).ravel()]

        return {
            "format": ROUTER_FORMAT,
            "domains": list(self.domains),
            "adapters": dict(self.adapters),
            "base_model": dict(self.base_model),
            "features": FEATURES,
            "classifier": {"kind": self.classifier, "center": floats(self.center),
                           "weights": [floats(row) for row in self.weights], "bias": floats(self.bias)},
            "confidence": {"space": "adapter",
                           "centroids": {d: [floats(row) for row in c] for d, c in self.centroids.items()},
                           "thresholds": {d: float(t) for d, t in self.thresholds.items()}},
            "base_threshold": self.base_threshold,
            "heldout": self.heldout,
            "info": self.info,
        }

    @classmethod
    def from_json(cls, data: dict, where=None, ref: Optional[str] = None) -> "Router":
        try:
            version = data.get("format", ROUTER_FORMAT)
            if version not in (1, ROUTER_FORMAT):
                raise CachetuneError(f"router format {version!r} is not one this cachetune reads (1 or "
                                     f"{ROUTER_FORMAT}): retrain it with `cachetune router train`", where)
            if data["features"] != FEATURES:
                raise CachetuneError(f"router features '{data['features']}' are not '{FEATURES}'", where)
            domains = list(data["domains"])
            clf, conf = data["classifier"], data["confidence"]
            router = cls(
                domains=domains, classifier=clf["kind"],
                center=np.asarray(clf["center"], dtype=np.float32),
                weights=np.asarray(clf["weights"], dtype=np.float32).reshape(len(domains), -1),
                bias=np.asarray(clf["bias"], dtype=np.float32).reshape(len(domains)),
                centroids={d: _centroid_rows(conf["centroids"][d], version) for d in domains},
                thresholds={d: float(conf["thresholds"][d]) for d in domains},
                base_threshold=data.get("base_threshold"), adapters=dict(data["adapters"]),
                base_model=dict(data["base_model"]), heldout=data.get("heldout") or {},
                info=data.get("info") or {}, ref=ref,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CachetuneError(f"not a router file: {type(exc).__name__} {exc}", where) from None
        if set(router.adapters) != set(domains):
            raise CachetuneError("router file: 'adapters' must name one adapter per domain", where)
        return router


@dataclass
class RoutedEmbeddings:
    """What ``encode(texts, domain="auto")`` returns: a row, a domain and a cache threshold per text.

    ``domains[i]`` is None for a text of no registered domain (encoded with the base model, whose
    threshold ``thresholds[i]`` then is). ``routed[i]`` is ``(embedding, domain)``; a slice is a
    ``RoutedEmbeddings`` again.
    """

    embeddings: np.ndarray
    domains: List[Optional[str]]
    thresholds: List[Optional[float]]

    def __len__(self) -> int:
        return len(self.domains)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return RoutedEmbeddings(self.embeddings[index], self.domains[index], self.thresholds[index])
        return self.embeddings[index], self.domains[index]


def routed_encode(router: Router, feature_model, encoders: Dict[str, object], base_encode, texts: Sequence[str],
                  adapter_thresholds: Optional[Dict[str, Optional[float]]] = None,
                  mixed_encode=None) -> RoutedEmbeddings:
    """Route each text, encode it with its domain's adapter, re-encode the unsure ones with the base.

    ``mixed_encode(texts, domains)``, when given, encodes every text with its own domain's adapter in
    one pass (``MultiAdapterModel.encode_mixed``: the base computation is shared); without it each domain's
    texts go through ``encoders[domain](texts)`` in one call. ``base_encode(texts)`` encodes with the
    base model; all return one row per text. ``feature_model`` is the SentenceTransformer whose token
    embeddings the router reads. A text given twice is routed and encoded once.
    """
    texts = list(texts)
    if not texts:
        raise CachetuneError("nothing to encode: no texts")
    missing = [d for d in router.domains if d not in encoders]
    if missing:
        raise CachetuneError(f"{router.label} routes to {', '.join(missing)}, which is not loaded")
    adapter_thresholds = adapter_thresholds or {}
    unique = list(dict.fromkeys(texts))
    choice = router.choose(token_embedding_means(feature_model, unique))
    picked = [router.domains[k] for k in choice]
    if mixed_encode is not None:
        vectors = np.asarray(mixed_encode(unique, picked))
    else:
        vectors = [None] * len(unique)
        for domain in router.domains:
            members = [i for i, d in enumerate(picked) if d == domain]
            if members:
                for i, row in zip(members, np.asarray(encoders[domain]([unique[i] for i in members]))):
                    vectors[i] = row
        vectors = np.stack(vectors)
    chosen: List[Optional[str]] = list(picked)
    for k, domain in enumerate(router.domains):
        members = np.flatnonzero(choice == k)
        if len(members):
            sure = router.confidence(domain, vectors[members]) >= router.thresholds[domain]
            for i in members[~sure]:
                chosen[i] = None
    unsure = [i for i, d in enumerate(chosen) if d is None]
    if unsure:
        vectors[unsure] = np.asarray(base_encode([unique[i] for i in unsure]))
    position = {text: i for i, text in enumerate(unique)}
    rows = [position[text] for text in texts]
    domains = [chosen[i] for i in rows]
    thresholds = [router.threshold_for(d, adapter_thresholds.get(d)) for d in domains]
    return RoutedEmbeddings(vectors[rows], domains, thresholds)
