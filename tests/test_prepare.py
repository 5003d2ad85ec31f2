"""`cachetune prepare`: every source format, dedupe rules, the split, bad input, real data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cachetune.core.plugin_manager import get_plugin_manager
from cachetune.core.data.prepare import prepare
from cachetune.core.text import exact_key, near_key, normalize_query


@pytest.fixture(scope="module")
def pm():
    return get_plugin_manager(load_entrypoints=False)


def lines(path: Path) -> list:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_normalisation_and_keys():
    assert normalize_query("  Sort\u00a0a   list\n") == "Sort a list"
    assert normalize_query("cafe\u0301") == "caf\u00e9"  # NFC
    assert exact_key("Sort a LIST") == exact_key("sort a list")
    assert near_key("How do I sort a list?") == near_key("sort a list")
    # order matters: these are opposite questions, not duplicates
    assert near_key("convert int to string") != near_key("convert string to int")


def test_dedupe_counts(pm, tmp_path):
    src = tmp_path / "q.txt"
    src.write_text("\n".join([
        "How do I sort a list?", "How do I sort a list?", "how do i SORT a list?",  # exact, case-only
        "sort a list",                                                      # near duplicate
        "", "   ", "hi",                                                    # empty x2, too short
        "x" * 500,                                                          # too long
        "convert int to string", "convert string to int",                  # both kept
    ]) + "\n", encoding="utf-8")
    summary = prepare(pm.get_domain("programming"), tmp_path / "o", source=str(src), holdout=0.0)
    c = summary["counts"]
    assert (c["read"], c["empty"], c["too_short"], c["too_long"]) == (10, 2, 1, 1)
    assert (c["exact_duplicates"], c["case_duplicates"], c["near_duplicates"], c["kept"]) == (1, 1, 1, 3)
    kept = [r["query"] for r in lines(tmp_path / "o" / "train.jsonl")]
    assert kept == ["How do I sort a list?", "convert int to string", "convert string to int"] or \
        sorted(kept) == sorted(["How do I sort a list?", "convert int to string", "convert string to int"])


def test_split_is_by_group_and_deterministic(pm, shared_data, tmp_path):
    src = shared_data / "conala" / "conala-train.json"
    a = prepare(pm.get_domain("programming"), tmp_path / "a", source=str(src), holdout=0.2, seed=3)
    prepare(pm.get_domain("programming"), tmp_path / "b", source=str(src), holdout=0.2, seed=3)
    c = prepare(pm.get_domain("programming"), tmp_path / "c", source=str(src), holdout=0.2, seed=4)
    train, held = lines(tmp_path / "a" / "train.jsonl"), lines(tmp_path / "a" / "holdout.jsonl")
    train_keys = {exact_key(r["query"]) for r in train}
    held_keys = {exact_key(r["query"]) for r in held}
    assert not train_keys & held_keys
    # A Stack Overflow question (several intents of one question_id) is on one side only.
    assert a["group_field"] == "question_id"
    assert not {r["meta"]["question_id"] for r in train} & {r["meta"]["question_id"] for r in held}
    assert len(train) + len(held) == a["counts"]["kept"]
    assert abs(len(held) / a["counts"]["kept"] - 0.2) < 0.01
    assert (tmp_path / "a" / "holdout.jsonl").read_bytes() == (tmp_path / "b" / "holdout.jsonl").read_bytes()
    assert (tmp_path / "a" / "holdout.jsonl").read_bytes() != (tmp_path / "c" / "holdout.jsonl").read_bytes()
    assert set(train[0]) >= {"id", "query", "domain", "source"}
    assert len({r["id"] for r in train + held}) == len(train) + len(held)
    assert c["counts"]["kept"] == a["counts"]["kept"]


def test_real_conala_curated(pm, shared_data, tmp_path, run_cli):
    result = run_cli(["prepare", "--domain", "programming", "--source", shared_data / "conala" / "conala-train.json",
                      "--output", tmp_path])
    assert result.exit_code == 0, result.stderr
    stats = json.loads((tmp_path / "prepare.json").read_text(encoding="utf-8"))
    assert stats["counts"]["read"] == 2378
    # Every record of the questions whose pairs ship as the evaluation set is left out.
    from cachetune.domains.programming.evaluation import reserved_question_ids

    records = json.loads((shared_data / "conala" / "conala-train.json").read_text(encoding="utf-8"))
    reserved = [r for r in records if r["question_id"] in reserved_question_ids()]
    assert len(reserved_question_ids()) == 194 and stats["counts"]["reserved_for_evaluation"] == len(reserved)
    kept = lines(tmp_path / "train.jsonl") + lines(tmp_path / "holdout.jsonl")
    assert not {r["meta"]["question_id"] for r in kept} & reserved_question_ids()
    unique_intents = len({r["intent"] for r in records if r["question_id"] not in reserved_question_ids()})
    assert stats["counts"]["read"] - stats["counts"]["reserved_for_evaluation"] \
        - stats["counts"]["exact_duplicates"] == unique_intents
    assert stats["counts"]["kept"] >= 1450
    row = lines(tmp_path / "train.jsonl")[0]
    assert row["domain"] == "programming" and row["source"] == "conala-train.json"


def test_real_medquad_all_sources(pm, shared_data, tmp_path):
    stats = prepare(pm.get_domain("medical"), tmp_path, source=str(shared_data / "medquad"))
    assert len(stats["by_source"]) == 12
    unique = stats["counts"]["read"] - stats["counts"]["exact_duplicates"]
    assert 44_000 <= unique <= 45_000
    assert stats["counts"]["kept"] >= 43_000
    row = lines(tmp_path / "holdout.jsonl")[0]
    assert {"qtype", "focus"} <= set(row["meta"])
    # One disease (focus) is on one side of the split only.
    train_focus = {r["meta"]["focus"] for r in lines(tmp_path / "train.jsonl")}
    assert stats["group_field"] == "focus" and stats["groups"]["holdout"] > 100
    assert not train_focus & {r["meta"]["focus"] for r in lines(tmp_path / "holdout.jsonl")}


def test_group_field_for_user_files(pm, tmp_path, run_cli):
    src = tmp_path / "q.jsonl"
    rows = [{"query": f"question number {i} about topic {i % 7} here", "topic": f"t{i % 7}"} for i in range(70)]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    for seed in range(3):
        result = run_cli(["prepare", "--domain", "programming", "--source", src, "--group-field", "topic",
                          "--holdout", "0.3", "--seed", seed, "--output", tmp_path / f"o{seed}"])
        assert result.exit_code == 0, result.stderr
        train, held = lines(tmp_path / f"o{seed}" / "train.jsonl"), lines(tmp_path / f"o{seed}" / "holdout.jsonl")
        assert held and not {r["meta"]["topic"] for r in train} & {r["meta"]["topic"] for r in held}
        assert len(held) == 20  # two whole topics of ten: the closest to the share of 21
    result = run_cli(["prepare", "--domain", "programming", "--source", src, "--group-field", "topci",
                      "--output", tmp_path / "bad"])
    err = result.stderr.strip().splitlines()
    assert result.exit_code != 0 and len(err) == 1 and "--group-field: no query has a 'topci' field" in err[0]


def test_conala_mined_jsonl(pm, tmp_path):
    src = tmp_path / "conala-mined.jsonl"
    rows = [{"parent_answer_post_id": 1, "intent": f"how to do thing number {i} in a loop", "snippet": "x",
             "id": f"1_{i}", "question_id": i, "prob": 0.5} for i in range(5)]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    stats = prepare(pm.get_domain("programming"), tmp_path / "o", source=str(src), holdout=0.0)
    assert stats["counts"]["kept"] == 5


@pytest.mark.parametrize("name, content, extra", [
    ("q.jsonl", '{"question": "how to merge two dicts"}\n{"question": "how to flatten a nested list"}\n', []),
    ("q.csv", "id,query\n1,how to merge two dicts\n2,\"how to flatten a nested list, deeply\"\n", []),
    ("q.tsv", "text\tlabel\nhow to merge two dicts\t0\nhow to flatten a nested list\t1\n", []),
    ("q.txt", "# comment\nhow to merge two dicts\nhow to flatten a nested list\n", []),
    ("q.jsonl", '{"body": "how to merge two dicts"}\n{"body": "how to flatten a nested list"}\n',
     ["--query-field", "body"]),
])
def test_generic_formats(run_cli, tmp_path, name, content, extra):
    src = tmp_path / name
    src.write_text(content, encoding="utf-8")
    result = run_cli(["prepare", "--domain", "medical", "--source", src, "--holdout", "0",
                      "--output", tmp_path / "o", *extra])
    assert result.exit_code == 0, result.stderr
    assert {r["query"] for r in lines(tmp_path / "o" / "train.jsonl")} == {
        "how to merge two dicts", "how to flatten a nested list" + (", deeply" if name == "q.csv" else "")}


def test_default_sources_work_offline(run_cli, tmp_path):
    for domain in ("programming", "medical"):
        result = run_cli(["prepare", "--domain", domain, "--output", tmp_path / domain])
        assert result.exit_code == 0, result.stderr
        stats = json.loads((tmp_path / domain / "prepare.json").read_text(encoding="utf-8"))
        assert stats["counts"]["kept"] >= 3 and stats["counts"]["holdout"] >= 1


def test_hub_ids_go_through_datasets(pm, tmp_path, monkeypatch):
    import datasets

    calls = []

    def fake_load(name, config=None, split=None):
        calls.append((name, config, split))
        return datasets.Dataset.from_dict({
            "question_id": [1, 2], "intent": ["How to add a column to a dataframe", "How to drop NaN rows"],
            "rewritten_intent": [None, "drop rows with NaN in a dataframe"], "snippet": ["a", "b"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    stats = prepare(pm.get_domain("programming"), tmp_path / "m", source="neulab/conala:mined", holdout=0.0)
    prepare(pm.get_domain("programming"), tmp_path / "c", source="neulab/conala", holdout=0.0)
    assert calls == [("neulab/conala", "mined", "train"), ("neulab/conala", "curated", "train")]
    assert stats["counts"]["kept"] == 2


def test_hub_unreachable_is_one_line(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    result = run_cli(["prepare", "--domain", "medical", "--source", "lavita/MedQuAD", "--output", tmp_path / "o"])
    assert result.exit_code != 0
    assert len(result.stderr.strip().splitlines()) == 1 and "lavita/MedQuAD" in result.stderr
    assert not (tmp_path / "o").exists()


@pytest.fixture
def previous_output(tmp_path):
    """An output folder from an earlier good run, which a failing run must leave intact
    (even with --overwrite, which the runs below pass to get past the refusal to replace it)."""
    out = tmp_path / "out"
    out.mkdir()
    for name in ("train.jsonl", "holdout.jsonl", "prepare.json"):
        (out / name).write_text("previous\n", encoding="utf-8")
    return out


def _assert_untouched(out: Path):
    assert sorted(p.name for p in out.iterdir()) == ["holdout.jsonl", "prepare.json", "train.jsonl"]
    assert all((out / n).read_text(encoding="utf-8") == "previous\n" for n in ("train.jsonl", "holdout.jsonl"))


def test_bad_missing_file(run_cli, tmp_path, previous_output):
    result = run_cli(["prepare", "--domain", "programming", "--source", tmp_path / "nope.json",
                      "--output", previous_output, "--overwrite"])
    assert result.exit_code != 0
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and "nope.json" in err[0] and "not found" in err[0]
    _assert_untouched(previous_output)


def test_bad_json_not_conala(run_cli, tmp_path, previous_output):
    src = tmp_path / "other.json"
    src.write_text(json.dumps([{"title": "x", "body": "y"}]), encoding="utf-8")
    result = run_cli(["prepare", "--domain", "programming", "--source", src, "--output", previous_output,
                      "--overwrite"])
    err = result.stderr.strip().splitlines()
    assert result.exit_code != 0 and len(err) == 1
    assert "other.json" in err[0] and "not a CoNaLa JSON file" in err[0]
    _assert_untouched(previous_output)


def test_bad_jsonl_line_7(run_cli, tmp_path, previous_output):
    src = tmp_path / "broken.jsonl"
    good = [json.dumps({"query": f"how do I handle case number {i}"}) for i in range(1, 7)]
    src.write_text("\n".join(good + ['{"query": "cut off', json.dumps({"query": "after the break"})]) + "\n",
                   encoding="utf-8")
    result = run_cli(["prepare", "--domain", "medical", "--source", src, "--output", previous_output,
                      "--overwrite"])
    err = result.stderr.strip().splitlines()
    assert result.exit_code != 0 and len(err) == 1
    assert f"{src}:7:" in err[0] and "invalid JSON" in err[0]
    assert "Traceback" not in result.stderr
    _assert_untouched(previous_output)


def test_bad_options(run_cli, tmp_path):
    for args, needle in ((["--holdout", "1.5"], "--holdout"), (["--limit", "0"], "--limit")):
        result = run_cli(["prepare", "--domain", "programming", "--output", tmp_path / "o", *args])
        assert result.exit_code != 0 and needle in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_limit_samples_across_sources(pm, shared_data, tmp_path):
    stats = prepare(pm.get_domain("medical"), tmp_path, source=str(shared_data / "medquad"), limit=200, seed=1)
    assert stats["counts"]["kept"] == 200 and stats["counts"]["limited"] > 40_000
    assert len(stats["by_source"]) >= 6


def test_medquad_hub_id(pm, tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda name, config=None, split=None: datasets.Dataset.from_dict(
        {"question": ["What causes gout?", "How is gout treated?"], "qtype": ["causes", "treatment"]}))
    stats = prepare(pm.get_domain("medical"), tmp_path, source="lavita/MedQuAD", holdout=0.0)
    rows = lines(tmp_path / "train.jsonl")
    assert stats["counts"]["kept"] == 2 and {r["meta"]["qtype"] for r in rows} == {"causes", "treatment"}


def test_medquad_bad_xml_names_file(run_cli, tmp_path):
    folder = tmp_path / "mq" / "1_Test_QA"
    folder.mkdir(parents=True)
    (folder / "0001.xml").write_text(
        '<Document id="1"><Focus>Gout</Focus><QAPairs><QAPair pid="1">'
        '<Question qid="1-1" qtype="causes">What causes gout ?</Question></QAPair></QAPairs></Document>',
        encoding="utf-8")
    (folder / "0002.xml").write_text("<Document><QAPairs>\n<QAPair>\n</Document>", encoding="utf-8")
    result = run_cli(["prepare", "--domain", "medical", "--source", tmp_path / "mq", "--output", tmp_path / "o"])
    err = result.stderr.strip().splitlines()
    assert result.exit_code != 0 and len(err) == 1 and "0002.xml:3" in err[0] and "invalid XML" in err[0]
    assert not (tmp_path / "o").exists()
