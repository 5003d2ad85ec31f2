"""Triplets from real paraphrase pairs, for training and evaluating without a generator.

CoNaLa curated gives two human wordings of one Stack Overflow question: ``intent`` and
``rewritten_intent``. Each pair becomes a triplet in the reference layout: anchor = the other
wording (where a generator would put its paraphrase), positive = the original query,
negative = a *mined* hard negative: the original query's nearest other query by the base
model, never one of the same question (same group) nor a duplicate of it.

Split by question (:func:`split_pairs`) before mining, so held-out queries never appear in
training triplets, not even as negatives.

The domain's training set ``conala-train`` (:data:`CONALA_TRAINING`) hands the same pairs to
``cachetune train`` / ``run`` as labelled pairs: from the CoNaLa curated JSON file the run reads
(``--source``) or names for it (``--training-source conala-train=FILE``), else from the subset
the package ships (``data/train/conala_train_pairs.jsonl``, disjoint from the evaluation pairs;
source and licence in ``data/train/CONALA_TRAIN_SOURCE.md``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from cachetune.core.errors import CachetuneError
from cachetune.core.textfiles import read_json
from cachetune.core.text import exact_key, near_key, normalize_query
from cachetune.core.types import TrainingContext, TrainingSet
from cachetune.domains.programming.rules import FILLER_WORDS

GENERATOR = "human:conala-rewritten-intent"
PACKAGED_TRAINING_PAIRS = Path(__file__).parent / "data" / "train" / "conala_train_pairs.jsonl"


@dataclass(frozen=True)
class Pair:
    """Two wordings of one question."""

    query: str       # the original wording: the triplet's positive
    paraphrase: str  # another wording: the triplet's anchor
    group: str       # question id: pairs of one group are never each other's negatives


def read_conala_pairs(path) -> List[Pair]:
    """``(intent, rewritten_intent, question_id)`` pairs from CoNaLa curated JSON (a JSON array).

    Records without a ``rewritten_intent``, or whose two wordings are the same text, are left
    out; repeated pairs are kept once; so are the questions whose pairs ship as the domain's
    evaluation set (:func:`~cachetune.domains.programming.evaluation.reserved_question_ids`).
    """
    from cachetune.domains.programming.evaluation import reserved_question_ids

    path = Path(path)
    if not path.exists():
        raise CachetuneError("file not found", path)
    records = read_json(path)
    if not isinstance(records, list):
        raise CachetuneError("expected a JSON array of CoNaLa records", path)
    pairs, seen = [], set()
    for number, rec in enumerate(records, start=1):
        if not isinstance(rec, dict) or "intent" not in rec:
            raise CachetuneError(f"record {number} has no 'intent'", path)
        query, paraphrase = normalize_query(rec.get("intent")), normalize_query(rec.get("rewritten_intent"))
        if not query or not paraphrase or exact_key(query) == exact_key(paraphrase) \
                or rec.get("question_id") in reserved_question_ids():
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


def _held_out_questions(data_dir: Optional[Path]) -> set:
    """Question ids of a prepared folder's held-out queries (a CoNaLa source keeps them in ``meta``)."""
    from cachetune.core.jsonl import iter_jsonl

    path = Path(data_dir) / "holdout.jsonl" if data_dir else None
    if path is None or not path.exists():
        return set()
    return {str(row["meta"]["question_id"]) for _, row in iter_jsonl(path)
            if isinstance(row.get("meta"), dict) and row["meta"].get("question_id") is not None}


def load_conala_training(context: TrainingContext) -> Optional[list]:
    """intent <-> rewritten_intent pairs (label 1, grouped by question) of the run's CoNaLa
    curated file, else of the packaged subset; never a question the prepared folder holds out."""
    from cachetune.core.evaluate.inputs import read_pairs

    source = Path(context.source).expanduser() if context.source else None
    if source is not None and source.suffix.lower() == ".json" and source.is_file():
        rows = [{"sentence1": p.query, "sentence2": p.paraphrase, "label": 1, "group": p.group}
                for p in read_conala_pairs(source)]
    elif context.explicit:
        raise CachetuneError("--training-source conala-train: expected a CoNaLa curated JSON file "
                             "(an array of {intent, rewritten_intent, question_id})", source)
    elif PACKAGED_TRAINING_PAIRS.exists():
        rows = read_pairs(PACKAGED_TRAINING_PAIRS, both_labels=False)
    else:
        return None
    held = _held_out_questions(context.data_dir)
    return [r for r in rows if r.get("group") not in held]


CONALA_TRAINING = TrainingSet(
    name="conala-train",
    load=load_conala_training,
    description="CoNaLa curated: a question's title (intent) <-> its human rewrite (rewritten_intent), "
                "questions outside the evaluation set",
)
