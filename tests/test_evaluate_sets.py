"""The built-in domains' evaluation sets on the real data: CoNaLa pairs and RQE."""

from __future__ import annotations

import json
import re
import zlib

import numpy as np
import pytest

from cachetune.core.types import EvaluationContext
from cachetune.core.errors import CachetuneError
from cachetune.core.plugin_manager import get_plugin_manager
from cachetune.core.text import exact_key, near_key
from cachetune.domains.medical import evaluation as medical_eval
from cachetune.domains.programming import evaluation as programming_eval


def bag_of_words(texts):
    """A cheap deterministic embedder (hashed word counts), standing in for the miner."""
    out = np.zeros((len(texts), 512), dtype=np.float32)
    for i, text in enumerate(texts):
        for token in re.findall(r"\w+", text.lower()):
            out[i, zlib.crc32(token.encode()) % 512] += 1.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


@pytest.fixture(scope="module")
def conala(shared_data):
    return json.loads((shared_data / "conala" / "conala-train.json").read_text(encoding="utf-8"))


def test_builtin_domains_register_their_sets():
    pm = get_plugin_manager(load_entrypoints=False)
    assert [s.name for s in pm.evaluation_sets("programming")] == ["conala-rewritten"]
    assert [s.name for s in pm.evaluation_sets("medical")] == ["rqe-test"]


def test_conala_pairs_are_balanced_hard_and_never_the_same_question(conala):
    rows = programming_eval.build_pairs(conala, bag_of_words, seed=0)
    pos = [r for r in rows if r["label"] == 1]
    neg = [r for r in rows if r["label"] == 0]
    assert len(pos) > 2100 and abs(len(pos) - len(neg)) <= 5
    rewrites_of = {}
    for record in conala:
        if record.get("rewritten_intent"):
            rewrites_of.setdefault(exact_key(record["intent"]), set()).add(exact_key(record["rewritten_intent"]))
    qid_of_rewrite = {exact_key(r["rewritten_intent"]): r["question_id"] for r in conala if r["rewritten_intent"]}
    assert len({(r["sentence1"], r["sentence2"]) for r in neg}) == len(neg)
    for r in neg:
        assert r["meta"]["question_id"] != r["meta"]["negative_question_id"]
        assert exact_key(r["sentence2"]) in qid_of_rewrite  # the negative is another question's rewrite
        assert exact_key(r["sentence2"]) not in rewrites_of[exact_key(r["sentence1"])]
    # Hard: the miner finds them far closer than random other rewrites are.
    emb_neg = bag_of_words([r["sentence1"] for r in neg]) * bag_of_words([r["sentence2"] for r in neg])
    shuffled = [p["sentence2"] for p in pos[1:] + pos[:1]]
    emb_rand = bag_of_words([p["sentence1"] for p in pos]) * bag_of_words(shuffled)
    assert emb_neg.sum(1).mean() > emb_rand.sum(1).mean() + 0.15
    # Seeded.
    again = programming_eval.build_pairs(conala, bag_of_words, seed=0)
    other = programming_eval.build_pairs(conala, bag_of_words, seed=1)
    assert again == rows and other != rows


def test_conala_holdout_keeps_training_queries_out(conala):
    from cachetune.domains.programming.rules import FILLER_WORDS

    key = lambda text: near_key(text, FILLER_WORDS)  # noqa: E731 - prepare's rule
    intents = sorted({key(r["intent"]) for r in conala if r.get("rewritten_intent")})
    held, train = set(intents[:300]), set(intents[300:])
    rows = programming_eval.build_pairs(conala, bag_of_words, held=held, train=train)
    assert rows and all(key(r["sentence1"]) in held for r in rows)
    assert not any(key(r["sentence1"]) in train or key(r["sentence2"]) in train for r in rows)
    rewrite_owner = {exact_key(r["rewritten_intent"]): key(r["intent"]) for r in conala if r["rewritten_intent"]}
    assert all(rewrite_owner[exact_key(r["sentence2"])] in held for r in rows if r["label"] == 0)


def test_conala_loader_with_a_prepared_folder_and_its_cache(conala, shared_data, tmp_path, monkeypatch):
    from cachetune.core.data.prepare import prepare

    pm = get_plugin_manager(load_entrypoints=False)
    source = shared_data / "conala" / "conala-train.json"
    prepare(pm.get_domain("programming"), tmp_path / "prep", source=str(source), holdout=0.1, seed=0,
            readers=pm.source_readers())
    calls = []

    def fake_miner():
        def embed(texts):
            calls.append(len(texts))
            return bag_of_words(texts)
        return embed

    monkeypatch.setattr(programming_eval, "mining_embedder", fake_miner)
    monkeypatch.setenv("CACHETUNE_HOME", str(tmp_path / "home"))
    context = EvaluationContext("programming", eval_data=str(source), holdout=tmp_path / "prep", seed=0)
    rows = programming_eval.load_conala_pairs(context)
    from cachetune.domains.programming.rules import FILLER_WORDS

    held = {near_key(json.loads(line)["query"], FILLER_WORDS) for line in open(tmp_path / "prep" / "holdout.jsonl")}
    assert rows and all(near_key(r["sentence1"], FILLER_WORDS) in held for r in rows)
    assert len(calls) == 1 and len(list((tmp_path / "home" / "cache" / "eval-sets").glob("*.json"))) == 1
    assert programming_eval.load_conala_pairs(context) == rows and len(calls) == 1  # cached: no re-mining
    limited = programming_eval.load_conala_pairs(EvaluationContext("programming", eval_data=str(source),
                                                                   holdout=tmp_path / "prep", limit=20, seed=0))
    assert len(limited) == 20 and all(r in rows for r in limited)


def test_conala_loader_source_errors(tmp_path):
    not_conala = tmp_path / "x.json"
    not_conala.write_text('{"a": 1}')
    with pytest.raises(CachetuneError, match="not a CoNaLa curated JSON file"):
        programming_eval.load_conala_pairs(EvaluationContext("programming", eval_data=str(not_conala)))
    mined_like = tmp_path / "mined.json"
    mined_like.write_text(json.dumps([{"intent": "sort a list", "snippet": "x.sort()", "question_id": 1}]))
    with pytest.raises(CachetuneError, match="only the curated split"):
        programming_eval.load_conala_pairs(EvaluationContext("programming", eval_data=str(mined_like)))
    with pytest.raises(CachetuneError, match="evaluation data not found"):
        programming_eval.load_conala_pairs(EvaluationContext("programming", eval_data=str(tmp_path / "missing")))


def _sample_keys(domain):
    from cachetune.core.data.sources import read_txt_queries

    pm = get_plugin_manager(load_entrypoints=False)
    source = str(pm.get_domain(domain).default_source)
    return {near_key(r.query) for r in read_txt_queries(source, {})}


@pytest.mark.parametrize("domain, load, n_rows, n_positive", [
    ("programming", programming_eval.load_conala_pairs, 388, 194),
    ("medical", medical_eval.load_rqe_pairs, 301, 129),  # the published 302 less pid 300 (read_rqe)
])
def test_packaged_pairs_load_without_any_data_folder(domain, load, n_rows, n_positive):
    """The sets ship in the package: no ../shared, no $CACHETUNE_DATA_DIR, disjoint from the sample queries."""
    rows = load(EvaluationContext(domain))
    assert len(rows) == n_rows and sum(r["label"] for r in rows) == n_positive
    samples = _sample_keys(domain)
    assert not any(near_key(r["sentence1"]) in samples or near_key(r["sentence2"]) in samples for r in rows)


def test_packaged_conala_pairs_are_never_trained_on(shared_data, tmp_path):
    """prepare of the full CoNaLa file leaves every packaged question out: nothing is dropped at evaluate."""
    from cachetune.core.data.prepare import prepare

    pm = get_plugin_manager(load_entrypoints=False)
    prepare(pm.get_domain("programming"), tmp_path, source=str(shared_data / "conala" / "conala-train.json"),
            holdout=0.1, seed=0, readers=pm.source_readers())
    rows = programming_eval.load_conala_pairs(EvaluationContext("programming", holdout=tmp_path))
    assert len(rows) == 388


def test_rqe_test_pairs(shared_data, tmp_path):
    rows = medical_eval.load_rqe_pairs(EvaluationContext("medical"))
    published = medical_eval.load_rqe_pairs(EvaluationContext("medical", eval_data=str(shared_data / "rqe" / "RQE_Test_302_pairs_AMIA2016.xml")))
    assert rows == published  # the packaged file is the published one
    assert rows[0]["sentence2"] == "What is High Blood Pressure?" and rows[0]["label"] == 0
    assert rows[0]["sentence1"].startswith("High Blood Pressure. I know you may not answer this")
    # A training query is never scored, matched by prepare's near-duplicate rule, not only exact text.
    prep = tmp_path / "prep"
    prep.mkdir()
    (prep / "holdout.jsonl").write_text(json.dumps({"id": "h", "query": "What is an Arrhythmia?"}) + "\n")
    (prep / "train.jsonl").write_text(json.dumps({"id": "t", "query": "what is   high blood pressure ??"}) + "\n")
    kept = medical_eval.load_rqe_pairs(EvaluationContext("medical", holdout=prep))
    dropped = sum(1 for r in rows if exact_key(r["sentence2"]) == "what is high blood pressure?")
    assert dropped >= 1 and len(kept) == 301 - dropped
    # Pid 300 (false) holds the texts of pid 184 (true): a slip in the published negatives, dropped;
    # every other pair stays, same-label repeats included.
    assert [r["meta"]["pid"] for r in rows if r["sentence1"].startswith("Help. I stuck a q-tip")] == ["184"]
    assert {r["meta"]["pid"] for r in rows} == {str(pid) for pid in range(1, 303)} - {"300"}
    # The training file can be chosen explicitly; something else cannot.
    train_rows = medical_eval.load_rqe_pairs(EvaluationContext("medical", eval_data=str(shared_data / "rqe" / "RQE_Train_8588_AMIA2016.xml"), limit=100))
    assert len(train_rows) == 100
    # Its pid 95 (false) repeats pid 94 (true): dropped; pid 5860 has an empty side: skipped.
    train_pids = [r["meta"]["pid"] for r in medical_eval.read_rqe(shared_data / "rqe" / "RQE_Train_8588_AMIA2016.xml")]
    assert len(train_pids) == 8586 and "94" in train_pids and not {"95", "5860"} & set(train_pids)
    # Any RQE file: only a false pair with a true twin goes (either order, case aside), not the true one.
    twin = tmp_path / "twin.xml"
    twin.write_text('<RQE-med-test><pair pid="1" value="false"><chq>Is flu contagious?</chq><faq>Can flu spread?</faq>'
                    '</pair><pair pid="2" value="true"><chq>can flu spread?</chq><faq>is flu contagious?</faq></pair>'
                    '<pair pid="3" value="false"><chq>Is flu contagious?</chq><faq>What is flu?</faq></pair>'
                    '<pair pid="4" value="true"><chq>Is flu contagious?</chq><faq>What is flu?</faq></pair>'
                    '</RQE-med-test>')
    assert [r["meta"]["pid"] for r in medical_eval.read_rqe(twin)] == ["2", "4"]
    with pytest.raises(CachetuneError, match="not an RQE file"):
        medical_eval.load_rqe_pairs(EvaluationContext("medical", eval_data=str(next((shared_data / "medquad" / "1_CancerGov_QA").glob("*.xml")))))
    with pytest.raises(CachetuneError, match="evaluation data not found"):
        medical_eval.load_rqe_pairs(EvaluationContext("medical", eval_data=str(shared_data / "conala")))
