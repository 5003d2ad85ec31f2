"""Bad input to `cachetune evaluate`: one line naming the file, line or option; exit 1; nothing lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cachetune.core.errors import CachetuneError
from cachetune.core.evaluate.inputs import parse_columns, parse_label, read_pairs, read_triplets
from make_adapter import make_adapter

MQP = Path(__file__).parent / "data" / "medical_question_pairs.csv"


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _fails(run_cli, args, *needles):
    result = run_cli(["evaluate", *args])
    assert result.exit_code == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    error = [line for line in lines if line.startswith("Error: ")]
    assert len(error) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in error[0], error[0]
    return error[0]


@pytest.fixture
def base(tiny_model):
    return ["--domain", "programming", "--base-model", tiny_model, "--no-domain-sets"]


def test_label_other_than_0_1(run_cli, base, tmp_path):
    bad = _write(tmp_path / "pairs.csv", "sentence1,sentence2,label\nsort a list,order a list,1\n"
                                         "reverse a list,sort a list,2\n")
    _fails(run_cli, [*base, "--pairs", bad, "--output", tmp_path / "o"],
           f"{bad}:3:", "'label': label must be 0 or 1, got '2'")
    bad = _write(tmp_path / "pairs.jsonl", json.dumps({"sentence1": "a b", "sentence2": "c d", "label": 1}) + "\n"
                 + json.dumps({"sentence1": "a b", "sentence2": "e f", "label": "yes"}) + "\n")
    _fails(run_cli, [*base, "--pairs", bad, "--output", tmp_path / "o"], f"{bad}:2:", "got 'yes'")


def test_missing_columns(run_cli, base, tmp_path):
    _fails(run_cli, [*base, "--pairs", MQP, "--output", tmp_path / "o"],
           f"{MQP}:1:", "missing columns 'sentence1', 'sentence2'", "--columns")
    _fails(run_cli, [*base, "--pairs", MQP, "--columns", "question_1,question_2,is_dup", "--output", tmp_path / "o"],
           f"{MQP}:1:", "missing column 'is_dup'", "header: dr_id, question_1, question_2, label")
    bad = _write(tmp_path / "p.jsonl", json.dumps({"sentence1": "a b", "sentence2": "c d", "label": 1}) + "\n"
                 + json.dumps({"sentence1": "a b", "label": 0}) + "\n")
    _fails(run_cli, [*base, "--pairs", bad, "--output", tmp_path / "o"], f"{bad}:2:", "missing field 'sentence2'")
    _fails(run_cli, [*base, "--pairs", MQP, "--columns", "question_1,label", "--output", tmp_path / "o"],
           "--columns must name three columns")


@pytest.mark.parametrize("name, text, needle", [
    ("empty.csv", "", "empty file"),
    ("header.csv", "sentence1,sentence2,label\n", "no pairs in the file (only a header)"),
    ("empty.jsonl", "", "no pairs in the file (empty file)"),
    ("blank.jsonl", "\n\n", "no pairs in the file (empty file)"),
])
def test_empty_pair_files(run_cli, base, tmp_path, name, text, needle):
    bad = _write(tmp_path / name, text)
    _fails(run_cli, [*base, "--pairs", bad, "--output", tmp_path / "o"], str(bad), needle)


def test_empty_and_broken_triplet_files(run_cli, base, tmp_path):
    empty = _write(tmp_path / "t.jsonl", "")
    _fails(run_cli, [*base, "--triplets", empty, "--output", tmp_path / "o"], str(empty), "no triplets")
    bad = _write(tmp_path / "t2.jsonl", json.dumps({"anchor": "a", "positive": "b", "negative": "c"}) + "\n"
                 + json.dumps({"anchor": "a", "positive": "b"}) + "\n")
    _fails(run_cli, [*base, "--triplets", bad, "--output", tmp_path / "o"], f"{bad}:2:", "no 'negative' field")
    bad = _write(tmp_path / "t3.jsonl", '{"anchor": "a", "positive": "b", "negative": "c"}\n{"anchor": \n')
    _fails(run_cli, [*base, "--triplets", bad, "--output", tmp_path / "o"], f"{bad}:2:", "invalid JSON")


def test_one_label_only(run_cli, base, tmp_path):
    bad = _write(tmp_path / "p.csv", "sentence1,sentence2,label\na b,c d,1\ne f,g h,1\n")
    _fails(run_cli, [*base, "--pairs", bad, "--output", tmp_path / "o"], str(bad), "need both labels")


def test_same_pair_labelled_both_ways(run_cli, base, tmp_path):
    """One pair labelled 1 and 0 ties with itself in every model: a label error, named by both lines."""
    bad = _write(tmp_path / "p.csv", "sentence1,sentence2,label\nsort a list,order a list,1\n"
                                     "reverse a list,sort a list,0\nOrder a list,Sort a list,0\n")
    _fails(run_cli, [*base, "--pairs", bad, "--output", tmp_path / "o"],
           f"{bad}:4:", "the same two texts are labelled 0 here and 1 on line 2")
    rows = [{"sentence1": "a b", "sentence2": "c d", "label": 0}, {"sentence1": "e f", "sentence2": "g h", "label": 1},
            {"sentence1": "c d", "sentence2": "a b", "label": 0}, {"sentence1": "C D", "sentence2": "A B", "label": 1}]
    bad = _write(tmp_path / "p.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(CachetuneError) as info:
        read_pairs(bad, both_labels=False)  # training pairs too
    assert info.value.line == 4 and "labelled 1 here and 0 on line 1" in str(info.value)
    # The same pair twice with one label is not an error (a traffic log repeats queries).
    ok = _write(tmp_path / "ok.jsonl", "".join(json.dumps(r) + "\n" for r in rows[:3]))
    assert [r["label"] for r in read_pairs(ok)] == [0, 1, 0]


def test_adapter_base_model_mismatch(run_cli, tiny_model, tmp_path):
    adapter = make_adapter(tiny_model, tmp_path / "adapter", "programming", seed=1)
    _fails(run_cli, ["--domain", "programming", "--adapter", adapter, "--base-model",
                     "sentence-transformers/all-MiniLM-L6-v2", "--no-domain-sets", "--pairs", MQP,
                     "--columns", "question_1,question_2,label", "--output", tmp_path / "o"],
           str(adapter), "adapter was trained on base model", "--base-model")
    assert not (tmp_path / "o").exists()


def test_adapter_trained_on_other_weights(run_cli, tiny_model, tmp_path):
    """The card records other base weights than the model resolved from it (or given): refused,
    whether or not --base-model is passed, as serving and the registry refuse it."""
    recorded = "ab" * 32
    adapter = make_adapter(tiny_model, tmp_path / "adapter", "programming", seed=1)
    card = json.loads((adapter / "cachetune.json").read_text())
    card["base_model"]["weights_sha256"] = recorded
    (adapter / "cachetune.json").write_text(json.dumps(card))
    args = ["--domain", "programming", "--adapter", adapter, "--no-domain-sets", "--pairs", MQP,
            "--columns", "question_1,question_2,label", "--output", tmp_path / "o"]
    for extra in ([], ["--base-model", tiny_model]):
        error = _fails(run_cli, [*args, *extra], "base model mismatch: weights sha256", recorded[:12], str(adapter))
        assert error.startswith(f"Error: {Path(tiny_model).resolve()}: "), error
    assert not (tmp_path / "o").exists()


def test_other_bad_options(run_cli, base, tmp_path):
    _fails(run_cli, [*base, "--adapter", tmp_path / "missing-adapter", "--pairs", MQP, "--output", tmp_path / "o"],
           "adapter folder not found")
    _fails(run_cli, [*base, "--holdout", tmp_path, "--output", tmp_path / "o"], "no holdout.jsonl")
    _fails(run_cli, [*base, "--pairs", MQP, "--target-precision", "1.5", "--output", tmp_path / "o"],
           "--target-precision must be in (0, 1]")
    _fails(run_cli, [*base, "--pairs", tmp_path / "nope.csv", "--output", tmp_path / "o"], "file not found")
    _fails(run_cli, [*base, "--output", tmp_path / "o"], "nothing to evaluate")
    _fails(run_cli, ["--domain", "programming", "--register-metrics", "--output", tmp_path / "o"],
           "--register-metrics needs --adapter NAME")
    afile = _write(tmp_path / "afile", "x")
    _fails(run_cli, [*base, "--pairs", MQP, "--output", afile], "exists and is not a folder (--output)")


def test_failed_run_keeps_earlier_outputs(run_cli, base, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text('{"earlier": true}')
    bad = _write(tmp_path / "p.csv", "sentence1,sentence2,label\na b,c d,7\n")
    _fails(run_cli, [*base, "--pairs", bad, "--output", out], "label must be 0 or 1")
    assert json.loads((out / "metrics.json").read_text()) == {"earlier": True}
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]


def test_readers_directly(tmp_path):
    rows = read_pairs(MQP, parse_columns("question_1,question_2,label"))
    assert len(rows) == 60 and sum(r["label"] for r in rows) == 30
    assert rows[0] == {"sentence1": "After how many hours from drinking an antibiotic can I drink alcohol?",
                       "sentence2": "How long should I wait after my last antibiotic dose before having a drink?",
                       "label": 1}
    # A quoted cell spanning two lines: the error names the line the bad record starts on.
    multi = _write(tmp_path / "m.csv", 'sentence1,sentence2,label\n"a\nb",c d,1\ne f,g h,0\n"x y",z w,maybe\n')
    with pytest.raises(CachetuneError) as info:
        read_pairs(multi)
    assert info.value.line == 5
    tsv = _write(tmp_path / "p.tsv", "sentence1\tsentence2\tlabel\na b\tc d\ttrue\ne f\tg h\t0.0\n")
    assert [r["label"] for r in read_pairs(tsv)] == [1, 0]
    for good, value in ((True, 1), (0, 0), ("1", 1), ("FALSE", 0), (1.0, 1)):
        assert parse_label(good) == value
    for bad in (2, -1, "", None, "0.5", 0.5):
        with pytest.raises(ValueError):
            parse_label(bad)
    trip = _write(tmp_path / "t.jsonl", "".join(json.dumps(r) + "\n" for r in [
        {"anchor": "a", "positive": "b", "negative": "c", "domain": "programming"},
        {"anchor": "a", "positive": "b", "negative": "c", "domain": "programming"},
    ]))
    rows, notes = read_triplets(trip, "programming")
    assert len(rows) == 1 and notes == ["1 repeated triplets skipped"]
    with pytest.raises(CachetuneError, match="no triplets for domain 'medical'"):
        read_triplets(trip, "medical")
