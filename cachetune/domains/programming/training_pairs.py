"""Triplets from real paraphrase pairs, for training and evaluating without a generator.

CoNaLa curated gives two human wordings of one Stack Overflow question: ``intent`` and
``rewritten_intent``. Each pair becomes a triplet in the reference layout: anchor = the other
wording (where a generator would put its paraphrase), positive = the original query,
negative = a *mined* hard negative: the original query's nearest other query by the base
model, never one of the same question (same group) nor a duplicate of it.

Split by question (:func:`split_pairs`) before mining, so held-out queries never appear in
training triplets, not even as negatives.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from cachetune.core.errors import CachetuneError
from cachetune.core.text import exact_key, near_key, normalize_query
from cachetune.domains.programming.rules import FILLER_WORDS

GENERATOR = "human:conala-rewritten-intent"


@dataclass(frozen=True)
class Pair:
    """Two wordings of one question."""

    query: str       # the original wording: the triplet's positive
    paraphrase: str  # another wording: the triplet's anchor
    group: str       # question id: pairs of one group are never each other's negatives


def read_conala_pairs(path) -> List[Pair]:
    """``(intent, rewritten_intent, question_id)`` pairs from CoNaLa curated JSON (a JSON array).

    Records without a ``rewritten_intent``, or whose two wordings are the same text, are left
    out; repeated pairs are kept once.
    """
    path = Path(path)
    if not path.exists():
        raise CachetuneError("file not found", path)
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CachetuneError(f"invalid JSON: {exc.msg}", path, exc.lineno) from None
    if not isinstance(records, list):
        raise CachetuneError("expected a JSON array of CoNaLa records", path)
    pairs, seen = [], set()
    for number, rec in enumerate(records, start=1):
        if not isinstance(rec, dict) or "intent" not in rec:
            raise CachetuneError(f"record {number} has no 'intent'", path)
        query, paraphrase = normalize_query(rec.get("intent")), normalize_query(rec.get("rewritten_intent"))
        if not query or not paraphrase or exact_key(query) == exact_key(paraphrase):
            continue
        key = (query, paraphrase)
        if key not in seen:
            seen.add(key)
            pairs.append(Pair(query, paraphrase, str(rec.get("question_id", query))))
    if not pairs:
        raise CachetuneError("no (intent, rewritten_intent) pairs", path)
    return pairs


def split_pairs(pairs: Sequence[Pair], holdout: float = 0.1, seed: int = 0) -> Tuple[List[Pair], List[Pair]]:
    """``(train, held_out)`` by question: every pair of a held-out group is held out.

    Groups are sorted before the seeded shuffle, so the split does not depend on input order.
    """
    if not 0.0 < holdout < 1.0:
        raise CachetuneError(f"holdout must be in (0, 1), got {holdout}")
    groups = sorted({p.group for p in pairs})
    random.Random(seed).shuffle(groups)
    held_groups = set(groups[: max(1, round(len(groups) * holdout))])
    train = [p for p in pairs if p.group not in held_groups]
    held = [p for p in pairs if p.group in held_groups]
    return train, held


def mine_negatives(model, queries: Sequence[str], groups: Sequence[str], batch_size: int = 256,
                   chunk: int = 1024, top_k: int = 32) -> List[Optional[str]]:
    """For each query, its nearest other query (cosine, ``model``) that is not of the same
    group and not a near duplicate; None when no candidate qualifies."""
    from cachetune.core.mining import nearest_neighbours

    emb = model.encode(list(queries), batch_size=batch_size, convert_to_tensor=True,
                       normalize_embeddings=True, show_progress_bar=False).float().cpu()
    keys = [near_key(q, FILLER_WORDS) for q in queries]
    exact = [exact_key(q) for q in queries]

    def skip(i: int, j: int) -> bool:
        return j == i or groups[j] == groups[i] or keys[j] == keys[i] or exact[j] == exact[i]

    found = nearest_neighbours(emb, emb, 1, skip=skip, chunk=chunk, spare=top_k - 1)
    return [queries[picked[0][0]] if picked else None for picked in found]


def triplets_from_pairs(pairs: Sequence[Pair], domain: str, model=None, base_model: Optional[str] = None,
                        generator: str = GENERATOR) -> List[dict]:
    """Triplet rows (the generation output format) for ``pairs``, negatives mined among the
    distinct queries of ``pairs`` with ``model`` (default: the base model ``base_model``)."""
    from cachetune.core.data.prepare import query_id

    if model is None:
        from cachetune.core.models import load_sentence_transformer

        model = load_sentence_transformer(base_model)
    group_of: Dict[str, str] = {}
    for p in pairs:
        group_of.setdefault(p.query, p.group)
    queries = list(group_of)
    negatives = dict(zip(queries, mine_negatives(model, queries, [group_of[q] for q in queries])))
    rows = []
    for p in pairs:
        negative = negatives[p.query]
        if negative is None:
            continue
        rows.append({"anchor": p.paraphrase, "positive": p.query, "negative": negative,
                     "query_id": query_id(domain, p.query), "domain": domain,
                     "negative_source": "mined", "generator": generator})
    return rows


def conala_triplet_files(source, output_dir, domain: str = "programming", holdout: float = 0.1, seed: int = 0,
                         model=None, base_model: Optional[str] = None) -> Dict[str, object]:
    """Write ``train_triplets.jsonl`` and ``holdout_triplets.jsonl`` from CoNaLa curated JSON,
    split by question; returns paths and counts."""
    from cachetune.core.jsonl import write_jsonl

    if model is None:
        from cachetune.core.models import load_sentence_transformer

        model = load_sentence_transformer(base_model)
    train, held = split_pairs(read_conala_pairs(source), holdout, seed)
    out = Path(output_dir)
    paths = {"train": out / "train_triplets.jsonl", "holdout": out / "holdout_triplets.jsonl"}
    counts = {}
    for name, part in (("train", train), ("holdout", held)):
        counts[name] = write_jsonl(paths[name], triplets_from_pairs(part, domain, model=model))
    return {"paths": paths, "counts": counts,
            "questions": {"train": len({p.group for p in train}), "holdout": len({p.group for p in held})}}
