"""The training file: LLM triplets + a domain's training sets + a user's pairs, negatives mined or human."""

from __future__ import annotations

import json

import pytest

from cachetune import EvaluationSet, TrainingSet
from cachetune.core.errors import CachetuneError
from cachetune.core.plugin_manager import get_plugin_manager
from cachetune.core.text import near_key
from cachetune.core.train.signal import assemble_training_data, select_training_sets, sources_file


@pytest.fixture(scope="module")
def base(embedded_model):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(embedded_model, device="cpu")


@pytest.fixture
def pm():
    return get_plugin_manager(load_entrypoints=False)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


PAIRS = [
    ("convert a string to an integer", "parse a str as int", 1, "q1"),
    ("convert a string to an integer", "convert an integer to a string", 0, "q1"),
    ("sort a list of dicts by a key", "order a list of dictionaries by one of their keys", 1, "q2"),
    ("reverse a list", "flip the order of the items of a list", 1, "q3"),
    ("reverse a list", "invert list order", 1, "q3"),
    ("read a file line by line", "iterate over the lines of a text file", 1, "q4"),
    ("remove duplicates from a list", "drop repeated items of a list", 1, "q5"),
    ("check if a key is in a dict", "test whether a dictionary has a given key", 1, "q6"),
    ("merge two dictionaries", "combine two dicts into one", 1, "q7"),
]


def pair_rows():
    return [{"sentence1": a, "sentence2": b, "label": label, "group": g} for a, b, label, g in PAIRS]


def test_pairs_become_triplets_with_human_or_mined_negatives(tmp_path, pm, base):
    pairs = write_jsonl(tmp_path / "mine.jsonl", pair_rows())
    out = tmp_path / "train.jsonl"
    summary = assemble_training_data(pm.get_domain("programming"), out, pairs=[pairs], model=base,
                                     relative_margin=0.05, log=lambda m: None)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == summary["triplets"] == 8  # one per label-1 pair
    by_anchor = {}
    for row in rows:
        by_anchor.setdefault(row["anchor"], []).append(row)
        assert row["source"] == "pairs:mine.jsonl" and row["domain"] == "programming"
    (human,) = by_anchor["convert a string to an integer"]
    assert human["negative"] == "convert an integer to a string" and human["negative_source"] == "human"
    mined = [r for r in rows if r["negative_source"] == "mined"]
    assert len(mined) == 7
    groups = {b: g for _, b, _, g in PAIRS}
    for row in mined:
        # never a wording of the same question, never another positive of the anchor
        assert groups.get(row["negative"]) != row["group"]
        a, p, n = base.encode([row["anchor"], row["positive"], row["negative"]], normalize_embeddings=True)
        assert float(a @ n) <= float(a @ p) * 0.95 + 1e-5  # the relative margin below the positive
    counts = json.loads(sources_file(out).read_text())["sources"]["pairs:mine.jsonl"]
    assert counts["pairs"] == 9 and counts["positives"] == 8 and counts["human_negatives"] == 1


def test_pairs_touching_evaluation_or_held_out_data_are_dropped(tmp_path, pm, base):
    rows = pair_rows() + [{"sentence1": "Merge two dictionaries!", "sentence2": "join 2 dicts", "label": 1,
                           "group": "q8"}]
    evaluation = EvaluationSet("toy-eval", "pairs", lambda ctx: [
        # near duplicate of a training text (case, punctuation), and a question id shared with a group
        {"sentence1": "MERGE two dictionaries", "sentence2": "x y z", "label": 1, "meta": {"question_id": 99}},
        {"sentence1": "a b c", "sentence2": "d e f", "label": 0, "meta": {"question_id": "q2"}},
    ])
    prepared = tmp_path / "data"
    prepared.mkdir()
    write_jsonl(prepared / "holdout.jsonl", [{"id": "h", "query": "read a file, line by line"}])
    write_jsonl(prepared / "train.jsonl", [{"id": "t", "query": "how to sort a list of numbers"}])
    pairs = write_jsonl(tmp_path / "p.csv.jsonl", rows)
    out = tmp_path / "train.jsonl"
    summary = assemble_training_data(pm.get_domain("programming"), out, pairs=[pairs], data_dir=prepared,
                                     evaluation_sets=[evaluation], model=base, log=lambda m: None)
    dropped = summary["sources"]["pairs:p.csv.jsonl"]["dropped"]
    assert dropped == {"same_text": 0, "overlaps_evaluation": 3, "held_out": 1, "no_negative": 0}
    texts = {t for line in out.read_text().splitlines() for t in json.loads(line).values() if isinstance(t, str)}
    assert not any(near_key(t) in {near_key("merge two dictionaries"), near_key("read a file line by line")}
                   for t in texts)
    assert "order a list of dictionaries by one of their keys" not in texts  # group q2 is evaluated


def test_llm_triplets_and_training_sets_combine_into_one_file(tmp_path, pm, base):
    llm = write_jsonl(tmp_path / "llm.jsonl", [{"anchor": "how to reverse a string", "positive": "reverse a string",
                                                 "negative": "reverse a list", "domain": "programming"}])
    seen = []

    def load(context):
        seen.append(context)
        return pair_rows()[2:6]

    toy = TrainingSet("toy-train", load)
    out = tmp_path / "train.jsonl"
    summary = assemble_training_data(pm.get_domain("programming"), out, triplets=[llm], training_sets=[toy],
                                     set_sources={"toy-train": "somewhere.json"}, default_source="run-source",
                                     model=base, log=lambda m: None)
    assert summary["sources"]["llm"] == {"triplets": 1}
    assert summary["sources"]["toy-train"]["triplets"] == 4
    assert seen[0].source == "somewhere.json" and seen[0].explicit is True and seen[0].domain == "programming"
    sources = [json.loads(line)["source"] for line in out.read_text().splitlines()]
    assert sorted(sources) == ["llm"] + ["toy-train"] * 4
    with pytest.raises(CachetuneError, match="--training-source: no training set 'other' is used"):
        assemble_training_data(pm.get_domain("programming"), out, training_sets=[toy],
                               set_sources={"other": "x"}, model=base)
    with pytest.raises(CachetuneError, match="no training data"):
        assemble_training_data(pm.get_domain("programming"), out, training_sets=[TrainingSet("n", lambda c: None)],
                               model=base, log=lambda m: None)


def test_select_training_sets(pm):
    sets = pm.training_sets("medical")
    assert select_training_sets(sets, "all") == sets and select_training_sets(sets, None) == sets
    assert select_training_sets(sets, "none") == []
    assert [s.name for s in select_training_sets(sets, "rqe-train")] == ["rqe-train"]
    with pytest.raises(CachetuneError, match="unknown training set 'nope' \\(this domain has: rqe-train, medquad-llm\\)"):
        select_training_sets(sets, ["nope"])


def test_packaged_training_pairs_are_disjoint_from_the_evaluation_pairs(pm):
    """What the package ships for training never shares a question or a text with what it evaluates on."""
    from cachetune.core.evaluate.inputs import read_pairs
    from cachetune.core.types import EvaluationContext, TrainingContext
    from cachetune.domains.medical.training import PACKAGED_LLM_PAIRS as MEDQUAD_LLM
    from cachetune.domains.medical.training import PACKAGED_TRAINING_PAIRS as RQE_TRAIN
    from cachetune.domains.programming.training_pairs import PACKAGED_TRAINING_PAIRS as CONALA_TRAIN

    for domain, name, path, labels in (("programming", "conala-train", CONALA_TRAIN, {1}),
                                       ("medical", "rqe-train", RQE_TRAIN, {1}),
                                       ("medical", "medquad-llm", MEDQUAD_LLM, {0, 1})):
        filler = pm.get_domain(domain).filler_words
        train = read_pairs(path, both_labels=False)
        assert len(train) >= 300 and {r["label"] for r in train} == labels
        (loaded,) = [s.load(TrainingContext(domain)) for s in pm.training_sets(domain) if s.name == name]
        assert loaded == train
        evaluation = [r for s in pm.evaluation_sets(domain) for r in s.load(EvaluationContext(domain)) or []]
        assert len(evaluation) >= 300, domain
        eval_keys = {near_key(r[f], filler) for r in evaluation for f in ("sentence1", "sentence2")}
        eval_ids = {str(r["meta"][k]) for r in evaluation for k in ("question_id", "negative_question_id")
                    if (r.get("meta") or {}).get(k) is not None}
        assert not [r for r in train if {near_key(r["sentence1"], filler), near_key(r["sentence2"], filler)} & eval_keys]
        if domain == "programming":
            assert not {r["group"] for r in train} & eval_ids
        if name == "medquad-llm":  # every negative belongs to an anchor that has a positive
            anchors = {(r["sentence1"], r["group"]) for r in train if r["label"] == 1}
            assert all((r["sentence1"], r["group"]) in anchors for r in train if r["label"] == 0)


def test_a_generated_training_set_gives_llm_negatives_checked_like_generated_triplets(tmp_path, pm, base):
    """Triplets shipped as a training set (medquad-llm): each triplet comes back with its own
    negative, named as the generator's (so inverted ones are dropped), never as a human's."""
    from cachetune.core.train.data import load_triplets
    from cachetune.domains.medical.training import triplets_as_pairs

    generated = write_jsonl(tmp_path / "gen.jsonl", [
        {"anchor": "what are the signs of anemia", "positive": "What are the symptoms of anemia ?",
         "negative": "How is anemia treated ?", "query_id": "m1"},
        {"anchor": "what are the signs of anemia", "positive": "What are the symptoms of anemia ?",
         "negative": "What causes anemia ?", "query_id": "m1"},
        {"anchor": "how do doctors test for asthma", "positive": "How to diagnose asthma ?",
         "negative": "What are the complications of asthma ?", "query_id": "m2"},
    ])
    pairs = triplets_as_pairs(generated)
    foreign = write_jsonl(tmp_path / "foreign.jsonl", [{"anchor": "a b", "positive": "c d", "negative": "e f",
                                                         "domain": "programming"}])
    with pytest.raises(CachetuneError, match="foreign.jsonl:1: a triplet of domain 'programming', not 'medical'"):
        triplets_as_pairs(foreign)
    assert [(r["label"], r["group"]) for r in pairs] == [(1, "m1"), (0, "m1"), (1, "m1"), (0, "m1"), (1, "m2"), (0, "m2")]
    out = tmp_path / "train.jsonl"
    sets = [TrainingSet("gen", lambda ctx: triplets_as_pairs(generated), generator="toy-llm"),
            TrainingSet("people", lambda ctx: pair_rows()[:2])]
    summary = assemble_training_data(pm.get_domain("medical"), out, training_sets=sets, model=base, log=lambda m: None)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    gen = [r for r in rows if r["source"] == "gen"]
    assert len(gen) == 3 and {r["negative_source"] for r in gen} == {"llm"} and {r["generator"] for r in gen} == {"toy-llm"}
    assert sorted(r["negative"] for r in gen if r["group"] == "m1") == ["How is anemia treated ?", "What causes anemia ?"]
    assert summary["sources"]["gen"]["llm_negatives"] == 3 and summary["sources"]["gen"]["generator"] == "toy-llm"
    (people,) = [r for r in rows if r["source"] == "people"]
    assert people["negative_source"] == "human" and people["generator"] == "human:people"
    data = load_triplets(out)
    assert [t for t, src in zip(data.trusted_negative, data.sources) if src == "gen"] == [False] * 3
    assert [t for t, src in zip(data.trusted_negative, data.sources) if src == "people"] == [True]


def test_training_source_errors_are_one_line(run_cli, tmp_path, tiny_model):
    base = ["train", "--domain", "medical", "--base-model", tiny_model, "--output", tmp_path / "out", "--quiet"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"sentence1": "a b", "sentence2": "c d", "label": 1}\n'
                   '{"sentence1": "a b", "sentence2": "e f", "label": "maybe"}\n', encoding="utf-8")
    cases = [
        (["--pairs", bad], f"{bad}:2: 'label'"),
        (["--training-sets", "nope"],
         "--training-sets: unknown training set 'nope' (this domain has: rqe-train, medquad-llm)"),
        (["--training-sets", "medquad-llm", "--training-source", "medquad-llm=" + str(bad)],
         f"{bad}:1: triplet has no 'anchor' field"),
        (["--training-sets", "medquad-llm", "--training-source", "medquad-llm=" + str(tmp_path / "none.jsonl")],
         "--training-source medquad-llm: file not found"),
        (["--training-sets", "rqe-train", "--training-source", "rqe-train=" + str(bad)],
         f"{bad}: --training-source rqe-train: expected the RQE training XML"),
        (["--training-sets", "rqe-train", "--training-source", "conala=x.json"],
         "--training-source: no training set 'conala' is used (used: rqe-train)"),
        ([], "give --train-data, --pairs or --training-sets"),
    ]
    for extra, needle in cases:
        res = run_cli([*base, *extra])
        assert res.exit_code != 0, extra
        assert needle in res.stderr, (extra, res.stderr)
        assert len([line for line in res.stderr.splitlines() if line.strip()]) <= 3, res.stderr
    assert not (tmp_path / "out").exists()


def test_train_with_pairs_and_triplets_records_every_source(run_cli, tmp_path, tiny_model):
    pairs = write_jsonl(tmp_path / "mine.jsonl", pair_rows())
    llm = write_jsonl(tmp_path / "llm.jsonl", [
        {"anchor": f"how to {verb} a string", "positive": f"{verb} a string", "negative": f"{verb} a list",
         "domain": "medical", "negative_source": "llm"} for verb in ("reverse", "split", "strip", "join")])
    out = tmp_path / "adapter"
    # medical: no RQE text is near these (the programming evaluation pairs hold some of them)
    res = run_cli(["train", "--domain", "medical", "--train-data", llm, "--pairs", pairs, "--base-model",
                   tiny_model, "--output", out, "--batch-size", "4", "--keep-inverted", "--quiet"])
    assert res.exit_code == 0, res.stderr
    card = json.loads((out / "cachetune.json").read_text())
    assert card["data"]["path"] == str(tmp_path / "adapter-training-data.jsonl")
    mine = card["data"]["assembled"]["sources"]["pairs:mine.jsonl"]
    # a random tiny model scores most candidates above the margin: some positives find no negative
    assert mine["human_negatives"] == 1 and mine["triplets"] + mine["dropped"]["no_negative"] == 8
    assert f"training source pairs:mine.jsonl: {mine['triplets']} triplets from 8 positive pairs" in res.stdout
    assert card["data"]["sources"] == {"llm": 4, "pairs:mine.jsonl": mine["triplets"]}
    assert card["data"]["assembled"]["sources"]["llm"] == {"triplets": 4}
