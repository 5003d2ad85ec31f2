"""Triplet loading/validation, tokenisation with dynamic padding, and the batch sampler."""

from __future__ import annotations

import json
import random
import statistics

import pytest

from cachetune.core.errors import CachetuneError
from cachetune.core.text import exact_key
from cachetune.core.train.data import TokenizedTexts, TripletBatchSampler, load_triplets


def write_rows(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


ROW = {"anchor": "sort a dict by value", "positive": "How do I sort a dictionary by its values?",
       "negative": "How do I sort a list of dictionaries by a key?", "domain": "programming"}


@pytest.mark.parametrize("bad, message", [
    ({"anchor": "a b", "positive": "c d"}, ":2: triplet has no 'negative' field"),
    ({"anchor": "a b", "negative": "x", "positive": None}, ":2: triplet has no 'positive' field"),
    ({"anchor": 3, "positive": "c d", "negative": "e"}, ":2: 'anchor' must be a string, got int"),
    ({"anchor": "  ", "positive": "c d", "negative": "e"}, ":2: 'anchor' is empty"),
    ({"anchor": "Same text", "positive": "same  text".replace("  ", " "), "negative": "e"},
     ":2: 'anchor' and 'positive' are the same text"),
    ("[1, 2]", ":2: expected a JSON object"),
    ("{not json", ":2: invalid JSON"),
])
def test_bad_rows_name_file_and_line(tmp_path, bad, message):
    path = write_rows(tmp_path / "t.jsonl", [ROW, bad])
    with pytest.raises(CachetuneError) as err:
        load_triplets(path, "programming")
    assert str(err.value).startswith(str(path)) and message in str(err.value)


def test_empty_file_and_folder_are_errors(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(CachetuneError, match="no triplets"):
        load_triplets(empty)
    with pytest.raises(CachetuneError, match="got a folder"):
        load_triplets(tmp_path)
    with pytest.raises(CachetuneError, match="file not found"):
        load_triplets(tmp_path / "missing.jsonl")


def test_duplicates_and_other_domains_are_skipped_and_counted(tmp_path):
    other = dict(ROW, domain="medical", anchor="what is asthma")
    path = write_rows(tmp_path / "t.jsonl", [ROW, ROW, other, dict(ROW, anchor="order dict by values")])
    data = load_triplets(path, "programming")
    assert len(data) == 2
    assert data.skipped == {"duplicate": 1, "other_domain": 1}
    only_other = write_rows(tmp_path / "o.jsonl", [other])
    with pytest.raises(CachetuneError, match="no usable triplets for domain 'programming'"):
        load_triplets(only_other, "programming")


def test_negative_is_optional_without_hard_negatives(tmp_path):
    path = write_rows(tmp_path / "t.jsonl", [{"anchor": "a b", "positive": "c d"}])
    data = load_triplets(path, need_negative=False)
    assert data.negatives == [None]
    with pytest.raises(CachetuneError, match="no 'negative'"):
        load_triplets(path)


def test_dynamic_padding(embedded_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_model)
    texts = TokenizedTexts(tok, ["short", "a much longer text with many more tokens in it", "short"], max_length=8)
    assert len(texts.lengths) == 2  # tokenised once per distinct text
    assert texts.lengths[1] == 8  # truncated
    batch = texts.batch(texts.ids(["short", "short"]))
    assert batch["input_ids"].shape == (2, texts.lengths[0])  # padded to the batch's own longest
    mixed = texts.batch([0, 1])
    assert mixed["input_ids"].shape == (2, 8)
    assert mixed["attention_mask"].sum(1).tolist() == [texts.lengths[0], 8]
    assert mixed["input_ids"][0, texts.lengths[0]:].eq(tok.pad_token_id).all()


def _rows(n_groups=60, per_group=3, seed=0):
    """Several anchors per positive (like several paraphrases of one query); negatives are other positives."""
    rng = random.Random(seed)
    anchors, positives, negatives, lengths = [], [], [], []
    for g in range(n_groups):
        for k in range(per_group):
            anchors.append(f"paraphrase {k} of question {g}")
            positives.append(f"Question {g}?")
            negatives.append(f"question {(g + 1) % n_groups}?")  # case differs: still the same text
            lengths.append(rng.randint(5, 60))
    return anchors, positives, negatives, lengths


def test_batches_have_no_false_negatives_and_cover_every_row():
    anchors, positives, negatives, lengths = _rows()
    sampler = TripletBatchSampler(anchors, positives, negatives, lengths, batch_size=16, seed=1, group_window=4)
    batches = sampler.all_batches(0)
    seen = sorted(i for b in batches for i in b)
    assert seen == list(range(len(anchors)))
    for batch in batches:
        assert len(batch) <= 16
        pos = [exact_key(positives[i]) for i in batch]
        assert len(set(pos)) == len(pos)
        assert len({anchors[i] for i in batch}) == len(batch)
        for i in batch:  # no row's positive is another row's hard negative
            others = {exact_key(negatives[j]) for j in batch if j != i}
            assert exact_key(positives[i]) not in others
    # conflicts are spread over the batches instead of ending up as tiny batches of their own
    assert len(batches) <= -(-len(anchors) // 16) + 1


def test_recurring_texts_do_not_leave_tiny_batches(shared_data):
    """Real CoNaLa: a query with 10 paraphrases, negatives shared by up to 15 rows."""
    from cachetune.domains.programming.training_pairs import read_conala_pairs

    pairs = read_conala_pairs(shared_data / "conala" / "conala-train.json")
    queries = [p.query for p in pairs]
    negatives = [queries[(k * 7919) % 300] for k in range(len(pairs))]  # 300 recurring negatives
    rows = [k for k in range(len(pairs)) if exact_key(negatives[k]) != exact_key(queries[k])]
    sampler = TripletBatchSampler([pairs[k].paraphrase for k in rows], [queries[k] for k in rows],
                                  [negatives[k] for k in rows], [len(pairs[k].paraphrase) for k in rows], 128)
    sizes = sorted(len(b) for b in sampler.all_batches(0))
    assert len(sizes) == -(-len(rows) // 128)
    assert sizes[0] >= 32, sizes  # no tiny leftover batches


def test_batches_are_seeded_per_epoch_and_length_grouped():
    anchors, positives, negatives, lengths = _rows(n_groups=200, per_group=1)
    negatives = [None] * len(anchors)
    sampler = TripletBatchSampler(anchors, positives, negatives, lengths, batch_size=10, seed=3)
    again = TripletBatchSampler(anchors, positives, negatives, lengths, batch_size=10, seed=3)
    assert sampler.all_batches(0) == again.all_batches(0)
    assert sampler.all_batches(1) != again.all_batches(0)
    spread = statistics.mean(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in sampler.all_batches(0))
    order = list(range(len(lengths)))
    random.Random(0).shuffle(order)
    random_spread = statistics.mean(max(lengths[i] for i in order[k:k + 10]) - min(lengths[i] for i in order[k:k + 10])
                                    for k in range(0, len(order), 10))
    assert spread < random_spread / 4


def test_ranks_get_disjoint_equal_shares():
    anchors, positives, negatives, lengths = _rows(n_groups=45, per_group=1)
    shares = [TripletBatchSampler(anchors, positives, negatives, lengths, 8, seed=0, world_size=2, rank=r)
              for r in (0, 1)]
    b0, b1 = shares[0].rank_batches(0), shares[1].rank_batches(0)
    assert len(b0) == len(b1) == len(shares[0].all_batches(0)) // 2
    assert not {i for b in b0 for i in b} & {i for b in b1 for i in b}


def test_batch_size_must_be_positive():
    with pytest.raises(CachetuneError, match="--batch-size"):
        TripletBatchSampler(["a"], ["b"], [None], [1], batch_size=0)
