"""Scoring precomputed embeddings: one model on one evaluation input, every set, and the
improvements of the adapter over the base model. Plain numpy; no model is loaded here.

Every distinct text of every input has one row in each model's embedding matrix (``index``
maps text -> row); embeddings are normalised, so cosine = dot product.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np

from cachetune.core.errors import CachetuneError
from cachetune.core.evaluate import metrics as M
from cachetune.core.evaluate.inputs import EvalInput

# How many of the highest-scoring different-question pairs the report lists per model.
TOP_FALSE_HITS = 5


def derived_pairs(rows: Sequence[dict]) -> List[dict]:
    """Triplets as pairs: (anchor, positive) labelled 1, (anchor, negative) labelled 0, once each."""
    out, seen = [], set()
    for row in rows:
        for other, label in ((row["positive"], 1), (row["negative"], 0)):
            key = (row["anchor"], other, label)
            if key not in seen:
                seen.add(key)
                out.append({"sentence1": row["anchor"], "sentence2": other, "label": label})
    return out


def texts_of(item: EvalInput) -> List[str]:
    fields = ("sentence1", "sentence2") if item.kind == "pairs" else ("anchor", "positive", "negative")
    return [row[f] for row in item.rows for f in fields]


def texts_of_row(item: EvalInput, i: int) -> List[str]:
    row = item.rows[i]
    fields = ("sentence1", "sentence2") if item.kind == "pairs" else ("anchor", "positive", "negative")
    return [row[f] for f in fields]


def count_truncated(model, texts: Sequence[str]) -> np.ndarray:
    """Which texts have more word pieces (with special tokens) than the model reads."""
    limit = getattr(model, "max_seq_length", None)
    tokenizer = getattr(model, "tokenizer", None)
    if not limit or tokenizer is None or not texts:
        return np.zeros(len(texts), dtype=bool)
    ids = tokenizer(list(texts), add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    return np.array([len(x) > limit for x in ids], dtype=bool)


def scores_of_pairs(rows, emb, index) -> np.ndarray:
    a = emb[[index[r["sentence1"]] for r in rows]]
    b = emb[[index[r["sentence2"]] for r in rows]]
    return np.einsum("ij,ij->i", a, b).astype(np.float64)


def score_input(item: EvalInput, emb: np.ndarray, index: Dict[str, int], target_precision: float,
                n_bootstrap: int, seed: int) -> Tuple[dict, dict]:
    """(metrics, raw scores for plots) of one model on one input."""
    out: dict = {}
    raw: dict = {}
    if item.kind == "triplets":
        anchors = emb[[index[r["anchor"]] for r in item.rows]]
        pos = np.einsum("ij,ij->i", anchors, emb[[index[r["positive"]] for r in item.rows]]).astype(np.float64)
        neg = np.einsum("ij,ij->i", anchors, emb[[index[r["negative"]] for r in item.rows]]).astype(np.float64)
        out["triplets"] = M.triplet_metrics(pos, neg)
        pair_rows = derived_pairs(item.rows)
        extra_scores = {"pos": pos, "neg": neg}
    else:
        pair_rows = item.rows
        extra_scores = None
    scores = scores_of_pairs(pair_rows, emb, index)
    labels = np.array([r["label"] for r in pair_rows])
    if 0 < labels.sum() < labels.size:
        out["pairs"] = M.pair_metrics(scores, labels, target_precision, n_bootstrap, seed)
        raw["curve"] = M.curves(scores, labels)
    raw["pos"], raw["neg"] = scores[labels == 1].tolist(), scores[labels == 0].tolist()
    raw["pair_rows"], raw["scores"] = pair_rows, scores
    worst = [int(i) for i in np.argsort(-scores, kind="stable") if labels[i] == 0][:TOP_FALSE_HITS]
    out["top_false_hits"] = [{"sentence1": pair_rows[i]["sentence1"], "sentence2": pair_rows[i]["sentence2"],
                              "score": float(scores[i])} for i in worst]
    if item.metrics is not None:
        out["extra"] = _extra_metrics(item, extra_scores or {"pair": scores})
    return out, raw


def _extra_metrics(item: EvalInput, scores: dict) -> dict:
    try:
        extra = item.metrics(item.rows, scores)
    except Exception as exc:
        raise CachetuneError(f"evaluation set '{item.name}': its metrics() failed: {exc!r}") from exc
    if not isinstance(extra, dict) or not all(isinstance(v, (int, float)) for v in extra.values()):
        raise CachetuneError(f"evaluation set '{item.name}': metrics() must return {{name: number}}")
    return {str(k): float(v) for k, v in extra.items()}


def score_sets(inputs: Sequence[EvalInput], embeddings: Dict[str, np.ndarray], index: Dict[str, int],
               truncated: np.ndarray, max_seq_length, target_precision: float, n_bootstrap: int,
               seed: int) -> Tuple[Dict[str, dict], Dict[str, dict]]:
    """Per set: its description and every model's metrics (and, for the files, the raw scores)."""
    sets: Dict[str, dict] = {}
    raws: Dict[str, dict] = {}
    for item in inputs:
        trunc_rows = sum(1 for i in range(len(item.rows))
                         if any(truncated[index[t]] for t in texts_of_row(item, i)))
        entry = {"kind": item.kind, "source": item.source, "description": item.description, "rows": len(item.rows),
                 "distinct_texts": len(set(texts_of(item))), "truncated_rows": trunc_rows,
                 "notes": list(item.notes)}
        if trunc_rows:
            entry["notes"].append(f"{trunc_rows} rows have a text longer than max_seq_length "
                                  f"{max_seq_length} word pieces (truncated when encoded)")
        raws[item.name] = {}
        for name, emb in embeddings.items():
            entry[name], raws[item.name][name] = score_input(item, emb, index, target_precision, n_bootstrap, seed)
        if "adapter" in entry:
            entry["improvement"], entry["improvement_absolute"] = improvement(entry["base"], entry["adapter"])
        sets[item.name] = entry
    return sets, raws


def improvement(base: dict, adapter: dict) -> Tuple[dict, dict]:
    """(relative, absolute) changes of the headline metrics, per kind."""
    rel, absolute = {}, {}
    for kind, names in (("triplets", M.TRIPLET_METRICS), ("pairs", M.PAIR_METRICS)):
        if kind in base and kind in adapter:
            rel[kind] = {n: M.relative_improvement(adapter[kind][n], base[kind][n]) for n in names}
            absolute[kind] = {n: adapter[kind][n] - base[kind][n] for n in names}
    return rel, absolute


def headline(result: dict) -> dict:
    """A set's metrics without the long tables (for the top-level keys and the registry)."""
    out = {}
    for kind in ("triplets", "pairs"):
        if kind in result:
            out[kind] = {k: v for k, v in result[kind].items() if k != "cache_simulation"}
    return out
