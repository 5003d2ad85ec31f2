"""Triplets built from real CoNaLa paraphrase pairs, with mined hard negatives."""

from __future__ import annotations

import json

import pytest

from cachetune.core.errors import CachetuneError
from cachetune.domains.programming.training_pairs import (
    Pair,
    conala_triplet_files,
    mine_negatives,
    read_conala_pairs,
    split_pairs,
    triplets_from_pairs,
)
from cachetune.core.text import exact_key, near_key


@pytest.fixture(scope="module")
def conala_pairs(shared_data):
    return read_conala_pairs(shared_data / "conala" / "conala-train.json")


def test_reads_real_pairs(conala_pairs):
    # 2,299 records have a rewritten_intent; identical wordings, repeats and the questions whose
    # pairs ship as the evaluation set are dropped.
    from cachetune.domains.programming.evaluation import reserved_question_ids

    assert 1800 < len(conala_pairs) <= 2299
    assert all(exact_key(p.query) != exact_key(p.paraphrase) for p in conala_pairs)
    assert len({p.group for p in conala_pairs}) > 1300
    assert not {p.group for p in conala_pairs} & {str(q) for q in reserved_question_ids()}


def test_split_is_by_question_and_seeded(conala_pairs):
    train, held = split_pairs(conala_pairs, 0.1, seed=0)
    assert len(train) + len(held) == len(conala_pairs)
    assert not {p.group for p in train} & {p.group for p in held}
    groups = len({p.group for p in conala_pairs})
    assert abs(len({p.group for p in held}) - 0.1 * groups) <= 1
    assert set(split_pairs(list(reversed(conala_pairs)), 0.1, seed=0)[1]) == set(held)
    assert split_pairs(conala_pairs, 0.1, seed=1)[1] != held


def test_bad_source(tmp_path):
    bad = tmp_path / "c.json"
    bad.write_text('{"intent": "x"}', encoding="utf-8")
    with pytest.raises(CachetuneError, match="expected a JSON array"):
        read_conala_pairs(bad)
    bad.write_text('[{"intent": "x", "rewritten_intent": null}]', encoding="utf-8")
    with pytest.raises(CachetuneError, match="no \\(intent, rewritten_intent\\) pairs"):
        read_conala_pairs(bad)


class FakeModel:
    """Encodes texts as fixed vectors, to check the mining rule exactly."""

    def __init__(self, vectors):
        self.vectors = vectors

    def encode(self, texts, **kwargs):
        import torch

        v = torch.tensor([self.vectors[t] for t in texts], dtype=torch.float32)
        return torch.nn.functional.normalize(v, dim=-1)


def test_mined_negative_is_nearest_other_question():
    queries = ["sort a list", "sort list", "sort a list in place", "reverse a list", "read a file"]
    groups = ["1", "2", "1", "3", "4"]
    vectors = {"sort a list": [1, 0, 0], "sort list": [0.99, 0.1, 0], "sort a list in place": [0.98, 0.2, 0],
               "reverse a list": [0.8, 0.6, 0], "read a file": [0, 0, 1]}
    got = mine_negatives(FakeModel(vectors), queries, groups)
    # "sort list" is a near duplicate and "sort a list in place" the same question: both skipped.
    assert got[0] == "reverse a list"
    assert got[3] == "sort a list in place"
    assert got[4] in queries and got[4] != "read a file"


@pytest.mark.slow
def test_triplet_rows_with_the_real_model(conala_pairs, embedded_model):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(embedded_model, device="cpu")
    pairs = conala_pairs[:150]
    rows = triplets_from_pairs(pairs, "programming", model=model)
    assert len(rows) == len(pairs)
    group_of = {p.query: p.group for p in pairs}
    queries = list(group_of)
    emb = model.encode(queries, normalize_embeddings=True, convert_to_tensor=True)
    for row, pair in zip(rows, pairs):
        assert set(row) == {"anchor", "positive", "negative", "query_id", "domain", "negative_source", "generator"}
        assert (row["anchor"], row["positive"], row["negative_source"]) == (pair.paraphrase, pair.query, "mined")
        assert group_of[row["negative"]] != pair.group
        # no allowed candidate (another question, not a duplicate) is closer to the positive
        i, j = queries.index(pair.query), queries.index(row["negative"])
        sims = (emb @ emb[i]).tolist()
        allowed = [k for k, q in enumerate(queries) if group_of[q] != pair.group and near_key(q) != near_key(pair.query)
                   and exact_key(q) != exact_key(pair.query)]
        assert j in allowed
        assert sims[j] >= max(sims[k] for k in allowed) - 1e-4


def test_conala_triplet_files(tmp_path, shared_data, tiny_model):
    from sentence_transformers import SentenceTransformer

    out = conala_triplet_files(shared_data / "conala" / "conala-train.json", tmp_path, holdout=0.1, seed=0,
                               model=SentenceTransformer(tiny_model, device="cpu"))
    train_rows = [json.loads(line) for line in out["paths"]["train"].open()]
    held_rows = [json.loads(line) for line in out["paths"]["holdout"].open()]
    assert (len(train_rows), len(held_rows)) == (out["counts"]["train"], out["counts"]["holdout"])
    held_texts = {r["positive"] for r in held_rows} | {r["anchor"] for r in held_rows}
    assert not held_texts & {t for r in train_rows for t in (r["anchor"], r["positive"], r["negative"])}
    assert out["questions"]["holdout"] > 100


def test_pair_is_a_plain_value():
    assert Pair("q", "p", "g") == Pair("q", "p", "g")
