"""`cachetune run`: config resolution, and the whole pipeline end to end with a real GGUF."""

from __future__ import annotations

import json

import pytest

from cachetune.core.plugin_manager import get_plugin_manager
from cachetune.core.pipeline.config import SAMPLE_GENERATE_LIMIT, resolve_config


@pytest.fixture(scope="module")
def pm():
    return get_plugin_manager(load_entrypoints=False)


def test_config_precedence(pm, tmp_path):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("domain: medical\ntrain:\n  lr: 3.0e-4\n  epochs: 2\ngenerate:\n  limit: 40\n",
                        encoding="utf-8")
    config = resolve_config(pm.get_domain("medical"), cfg_file, {"generate": {"limit": 10, "model": None}},
                            ["train.lr=1e-4", "evaluate.domain_sets=false"])
    assert config["train"]["lr"] == pytest.approx(1e-4)  # --set beats the file
    assert config["train"]["epochs"] == 2  # the file beats the defaults
    assert config["generate"]["limit"] == 10  # a flag beats the file
    assert config["generate"]["model"] is None and config["evaluate"]["domain_sets"] is False
    assert config["run"]["workdir"].endswith("medical")
    assert config["run"]["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"


@pytest.mark.parametrize("content, needle", [
    ("train:\n  lrr: 1\n", "unknown key 'train.lrr'"),
    ("trian:\n  lr: 1\n", "unknown section 'trian'"),
    ("domain: programming\n", "config is for domain 'programming'"),
    ("train: [1, 2\n", "invalid YAML"),
])
def test_bad_config_is_one_line(run_cli, tmp_path, content, needle):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(content, encoding="utf-8")
    result = run_cli(["run", "--domain", "medical", "--config", cfg_file, "--print-config"])
    err = result.stderr.strip().splitlines()
    assert result.exit_code != 0 and len(err) == 1 and needle in err[0] and "run.yaml" in err[0]


def test_one_pairs_file_is_a_list_of_one(pm, run_cli, tmp_path):
    """`--set evaluate.pairs=FILE` (or `pairs: FILE` in the YAML file) names one file, not its letters."""
    import yaml

    pairs = tmp_path / "pairs.csv"
    pairs.write_text("sentence1,sentence2,label\na,b,1\n", encoding="utf-8")
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(f"evaluate:\n  pairs: {pairs}\n", encoding="utf-8")
    assert resolve_config(pm.get_domain("medical"), cfg_file)["evaluate"]["pairs"] == [str(pairs)]
    result = run_cli(["run", "--domain", "medical", "--set", f"evaluate.pairs={pairs}", "--print-config"])
    assert result.exit_code == 0 and yaml.safe_load(result.stdout)["evaluate"]["pairs"] == [str(pairs)]
    result = run_cli(["run", "--domain", "medical", "--workdir", tmp_path / "w", "--set",
                      f"evaluate.pairs={tmp_path / 'nope.csv'}"])
    assert result.exit_code == 1 and not (tmp_path / "w").exists()
    assert result.stderr.strip().splitlines() == [f"Error: {tmp_path / 'nope.csv'}: pairs file not found "
                                                  "(evaluate.pairs)"]


@pytest.mark.parametrize("how, value, needle", [
    ("set", "train.epochs=two", "train.epochs: expected an integer, got 'two' (str)"),
    ("set", "train.epochs=1.5", "train.epochs: expected an integer, got 1.5 (float)"),
    ("set", "prepare.holdout=1", "prepare.holdout: expected a number below 1, got 1 (int)"),
    ("set", "generate.mine_fallback=maybe", "generate.mine_fallback: expected true or false, got 'maybe'"),
    ("set", "evaluate.target_precision=0", "evaluate.target_precision: expected a number above 0, got 0"),
    ("set", "train.pair_loss_weight=-0.5", "train.pair_loss_weight: expected a number >= 0, got -0.5 (float)"),
    ("file", "train:\n  lr: fast\n", "train.lr: expected a number or null, got 'fast' (str)"),
    ("file", "generate:\n  paraphrases: null\n", "generate.paraphrases: expected an integer, got None"),
    ("file", "train:\n  target_modules: [query, 3]\n", "train.target_modules: expected a list of text"),
])
def test_config_values_are_typed_when_resolved(run_cli, tmp_path, how, value, needle):
    """A wrong type fails at once, naming the key, the type and the value; nothing runs."""
    if how == "set":
        args = ["--set", value]
    else:
        (tmp_path / "run.yaml").write_text(value, encoding="utf-8")
        args = ["--config", tmp_path / "run.yaml"]
    result = run_cli(["run", "--domain", "medical", "--workdir", tmp_path / "work", *args])
    err = result.stderr.strip().splitlines()
    assert result.exit_code != 0 and len(err) == 1 and needle in err[0], err
    assert ("run.yaml" if how == "file" else "--set") in err[0]
    assert not (tmp_path / "work").exists()


def test_config_values_are_converted(pm):
    config = resolve_config(pm.get_domain("medical"), None, None, ["train.lr=1", "run.seed=3"])
    assert config["train"]["lr"] == 1.0 and isinstance(config["train"]["lr"], float)
    assert config["run"]["seed"] == 3


def test_print_config(run_cli, tmp_path):
    result = run_cli(["run", "--domain", "programming", "--workdir", tmp_path, "--set", "train.lr=5e-4",
                      "--print-config"])
    assert result.exit_code == 0
    import yaml

    config = yaml.safe_load(result.stdout)
    assert config["domain"] == "programming" and config["train"]["lr"] == pytest.approx(5e-4)
    assert config["run"]["workdir"] == str(tmp_path)
    assert not any(tmp_path.iterdir())  # printing the config runs nothing
    # the built-in sample is generated for only in part (the offline default stays under 15 minutes)
    assert config["prepare"]["source"] is None and config["generate"]["limit"] == SAMPLE_GENERATE_LIMIT
    for extra, limit in ((["--source", "q.txt"], None), (["--set", "generate.limit=300"], 300)):
        result = run_cli(["run", "--domain", "programming", "--print-config", *extra])
        assert result.exit_code == 0 and yaml.safe_load(result.stdout)["generate"]["limit"] == limit


def test_training_signal_flags_reach_the_config(run_cli, tmp_path):
    import yaml

    result = run_cli(["run", "--domain", "medical", "--print-config"])
    train = yaml.safe_load(result.stdout)["train"]
    assert (train["training_sets"], train["pairs"], train["training_sources"]) == ("all", [], {})
    assert train["min_steps"] >= 30  # a default run trains, not 3 batches
    result = run_cli(["run", "--domain", "medical", "--print-config", "--training-sets", "none", "--pairs", "a.csv",
                      "--pairs", "b.jsonl", "--training-source", "rqe-train=r.xml"])
    train = yaml.safe_load(result.stdout)["train"]
    assert (train["training_sets"], train["pairs"], train["training_sources"]) == \
        ("none", ["a.csv", "b.jsonl"], {"rqe-train": "r.xml"})
    result = run_cli(["run", "--domain", "medical", "--print-config", "--training-source", "rqe-train"])
    assert result.exit_code != 0 and "expected NAME=FILE, got 'rqe-train'" in result.stderr


@pytest.mark.slow
def test_run_end_to_end_then_resume(run_cli, tmp_path, smollm_gguf, tiny_model):
    """Every stage for real (SmolLM GGUF generator, tiny base), then a rerun that skips them all."""
    work, registry = tmp_path / "work", tmp_path / "registry"
    args = ["run", "--domain", "programming", "--workdir", work, "--limit", "14", "--model", smollm_gguf,
            "--base-model", tiny_model, "--registry", registry,
            "--set", "generate.max_tokens=96", "--set", "generate.embedding_filter=false",
            "--set", "generate.holdout_limit=4", "--set", "prepare.holdout=0.3",
            "--set", "train.batch_size=8", "--set", "evaluate.domain_sets=false"]
    first = run_cli(args)
    assert first.exit_code == 0, first.stderr
    state = json.loads((work / "run.json").read_text(encoding="utf-8"))["stages"]
    assert list(state) == ["prepare", "generate", "train", "evaluate", "register"]
    assert state["generate"]["summary"]["train"]["triplets_written"] > 0
    assert (work / "adapter" / "adapter_model.safetensors").exists()
    metrics = json.loads((work / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert "adapter" in metrics["sets"][next(iter(metrics["sets"]))]
    assert "margin" in first.stdout and "registered as programming@1" in first.stdout
    records = json.loads(run_cli(["adapters", "list", "--registry", registry, "--json"]).stdout)
    assert [r["version"] for r in records] == [1]

    weights = (work / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    second = run_cli(args)
    assert second.exit_code == 0, second.stderr
    assert second.stderr.count("up to date, skipped") == 5
    assert (work / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == weights
    records = json.loads(run_cli(["adapters", "list", "--registry", registry, "--json"]).stdout)
    assert len(records) == 1  # not registered twice

    # Another training option retrains (prepare and generate stay), and the card says which.
    other = run_cli(args + ["--set", "train.pair_loss_weight=0.5", "--stop-after", "train"])
    assert other.exit_code == 0, other.stderr
    assert other.stderr.count("up to date, skipped") == 2
    card = json.loads((work / "adapter" / "cachetune.json").read_text(encoding="utf-8"))
    assert card["hyperparameters"]["pair_loss_weight"] == 0.5

    # A re-split that stops after prepare: the adapter and evaluation of the old split are moved
    # aside and no longer reported (no "registered as programming@1" for a split it never saw).
    third = run_cli(args + ["--set", "prepare.holdout=0.5", "--stop-after", "prepare"])
    assert third.exit_code == 0, third.stderr
    assert "registered as" not in third.stdout and "adapter:" not in third.stdout
    assert not (work / "adapter").exists() and not (work / "eval").exists()
    assert sorted(p.name.split("-")[0] for p in (work / "stale").iterdir()) == [
        "evaluate", "generate", "prepare", "train", "train"]  # two adapters: weight 0, then 0.5
    state = json.loads((work / "run.json").read_text(encoding="utf-8"))["stages"]
    assert list(state) == ["prepare"]


def _sides(work):
    """(query ids, near keys of the query text) per side, from the split and the triplet files."""
    from cachetune.core.text import near_key

    sides = {}
    for side in ("train", "holdout"):
        ids, keys = set(), set()
        for name, id_field, text_field in ((f"data/{side}.jsonl", "id", "query"),
                                           (f"triplets/{side}.jsonl", "query_id", "positive")):
            path = work / name
            for line in (path.read_text(encoding="utf-8").splitlines() if path.exists() else []):
                row = json.loads(line)
                ids.add(row[id_field])
                keys.add(near_key(row[text_field]))
        sides[side] = (ids, keys)
    return sides


@pytest.mark.slow
def test_rerun_with_another_seed_and_share_never_mixes_splits(run_cli, tmp_path, smollm_gguf, tiny_model):
    """Change the seed and the held-out share, rerun in the same work folder: the old outputs are
    moved aside (named in the log) and no query is on both sides of any split or triplet file."""
    work, source = tmp_path / "work", tmp_path / "queries.txt"
    source.write_text("\n".join(["reverse a list", "sort a dictionary by value", "read a file line by line",
                                 "convert string to int", "merge two dictionaries", "remove duplicates from a list",
                                 "get the current date", "split a string on commas"]) + "\n", encoding="utf-8")
    base = ["run", "--domain", "programming", "--workdir", work, "--source", source, "--model", smollm_gguf,
            "--base-model", tiny_model, "--set", "generate.max_tokens=64", "--set", "generate.embedding_filter=false",
            "--set", "generate.paraphrases=1", "--set", "generate.negatives=1", "--stop-after", "generate"]
    first = run_cli(base + ["--set", "prepare.holdout=0.3", "--set", "run.seed=0"])
    assert first.exit_code == 0, first.stderr
    before = _sides(work)
    assert before["train"][0] and before["holdout"][0]
    second = run_cli(base + ["--set", "prepare.holdout=0.5", "--set", "run.seed=1"])
    assert second.exit_code == 0, second.stderr
    after = _sides(work)
    for ids_or_keys in (0, 1):
        assert not after["train"][ids_or_keys] & after["holdout"][ids_or_keys]
    # The re-split moved queries across (else the test shows nothing), and the old files were kept aside.
    assert before["train"][0] & after["holdout"][0]
    stale = sorted(p.name for p in (work / "stale").iterdir())
    assert [s.split("-")[0] for s in stale] == ["generate", "prepare"]
    assert "moved it to" in second.stderr and str(work / "stale") in second.stderr
    assert (work / "stale" / stale[0] / "train.jsonl").exists()
    state = json.loads((work / "run.json").read_text(encoding="utf-8"))["stages"]
    assert state["generate"]["fingerprint"] == state["generate"]["started"]


def test_every_config_key_has_a_type():
    from cachetune.core.pipeline.config import DEFAULTS, TYPES

    assert set(TYPES) == {f"{section}.{key}" for section, values in DEFAULTS.items() for key in values}
