"""`cachetune evaluate` end to end on the tiny BERT: outputs, base vs adapter, holdout, hooks, registry."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from cachetune import Domain, EvaluationSet, PromptTemplates, hookimpl
from cachetune.core.plugin_manager import get_plugin_manager, register_module
from make_adapter import make_adapter

DATA = Path(__file__).parent / "data"
MQP = DATA / "medical_question_pairs.csv"
MQP_COLUMNS = ["--columns", "question_1,question_2,label"]


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, tiny_model):
    """A real LoRA adapter (random, non-zero B) on the tiny BERT, with its card."""
    return make_adapter(tiny_model, tmp_path_factory.mktemp("eval-adapter") / "medical", "medical", seed=3,
                        scale=0.2)


def _read_scores(path: Path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_base_only_writes_every_output(run_cli, tiny_model, tmp_path):
    out = tmp_path / "out"
    result = run_cli(["evaluate", "--domain", "medical", "--base-model", tiny_model, "--pairs", MQP, *MQP_COLUMNS,
                      "--no-domain-sets", "--bootstrap", "200", "--output", out])
    assert result.exit_code == 0, result.stderr
    assert "pairs-medical_question_pairs" in result.stdout and "base" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    pairs = metrics["base"]["pairs"]
    for key in ("ap", "auc", "best_f1", "best_threshold", "calibrated_threshold", "hit_rate", "false_hit_rate"):
        assert key in pairs
    assert pairs["set"] == "pairs-medical_question_pairs" and pairs["n"] == 60
    assert "adapter" not in metrics and "improvement" not in metrics
    assert metrics["calibrated_threshold"] == pairs["calibrated_threshold"]
    slug = "pairs-medical_question_pairs"
    for name in ("metrics.json", "report.md", f"similarity_hist-{slug}.png", f"pr_curve-{slug}.png",
                 f"cache_curve-{slug}.png", f"cache_simulation-{slug}.csv", f"scores-{slug}.csv"):
        assert (out / name).is_file(), name
        assert name in metrics["files"]
    assert (out / f"pr_curve-{slug}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "| average precision |" in report and f"![pr_curve](pr_curve-{slug}.png)" in report
    # The saved scores reproduce the metrics with scikit-learn.
    rows = _read_scores(out / f"scores-{slug}.csv")
    labels = [int(r["label"]) for r in rows]
    scores = [float(r["base"]) for r in rows]
    assert pairs["ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert pairs["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    sim = list(csv.DictReader(open(out / f"cache_simulation-{slug}.csv")))
    assert len(sim) == 50 and sim[0]["threshold"] == "0.50" and sim[-1]["threshold"] == "0.99"


def test_adapter_side_by_side_matches_independent_encoding(run_cli, tiny_model, adapter_dir, tmp_path):
    out = tmp_path / "out"
    result = run_cli(["evaluate", "--domain", "medical", "--adapter", adapter_dir, "--pairs", MQP, *MQP_COLUMNS,
                      "--no-domain-sets", "--bootstrap", "100", "--output", out, "--json"])
    assert result.exit_code == 0, result.stderr
    printed = json.loads(result.stdout)
    metrics = json.loads((out / "metrics.json").read_text())
    assert printed == metrics
    base, adapter = metrics["base"]["pairs"], metrics["adapter"]["pairs"]
    assert metrics["models"]["base"]["id"] == tiny_model  # the adapter's card chose the base model
    assert metrics["improvement"]["pairs"]["ap"] == pytest.approx((adapter["ap"] - base["ap"]) / abs(base["ap"]))
    assert metrics["improvement"]["absolute"]["pairs"]["auc"] == pytest.approx(adapter["auc"] - base["auc"])
    assert metrics["calibrated_threshold"] == adapter["calibrated_threshold"]

    # Base and adapter scores equal an independent encoding of each model.
    from sentence_transformers import SentenceTransformer

    from cachetune.core.adapters import load_adapter_model

    rows = _read_scores(out / "scores-pairs-medical_question_pairs.csv")
    a_texts, b_texts = [r["sentence1"] for r in rows], [r["sentence2"] for r in rows]
    for name, model in (("base", SentenceTransformer(tiny_model, device="cpu")),
                        ("adapter", load_adapter_model(adapter_dir))):
        ea = model.encode(a_texts, normalize_embeddings=True)
        eb = model.encode(b_texts, normalize_embeddings=True)
        np.testing.assert_allclose([float(r[name]) for r in rows], (ea * eb).sum(1), atol=2e-5)
    assert not np.allclose([float(r["base"]) for r in rows], [float(r["adapter"]) for r in rows], atol=1e-3)
    report = (out / "report.md").read_text()
    assert "relative improvement" in report and "| adapter |" in report


def test_triplets_give_margin_accuracy_and_derived_pairs(run_cli, tiny_model, tmp_path):
    triplets = tmp_path / "triplets.jsonl"
    rows = [
        {"anchor": "how do I reverse a list", "positive": "reverse a list in python",
         "negative": "sort a list in python", "domain": "programming"},
        {"anchor": "turn a string into an int", "positive": "convert a string to an integer",
         "negative": "convert an integer to a string", "domain": "programming"},
        {"anchor": "check whether a dict has a key", "positive": "check if a key exists in a dictionary",
         "negative": "delete a key from a dictionary", "domain": "programming"},
        {"anchor": "symptoms of flu", "positive": "what are flu symptoms", "negative": "flu treatment",
         "domain": "medical"},
    ]
    triplets.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    result = run_cli(["evaluate", "--domain", "programming", "--base-model", tiny_model, "--triplets", triplets,
                      "--no-domain-sets", "--bootstrap", "0", "--no-plots", "--output", out])
    assert result.exit_code == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    t = metrics["base"]["triplets"]
    assert t["set"] == "triplets-triplets" and t["n"] == 3  # the medical row is another domain's
    assert t["margin"] == pytest.approx(t["pos"] - t["neg"])
    assert 0.0 <= t["accuracy"] <= 1.0
    assert metrics["base"]["pairs"]["set"] == "triplets-triplets"  # pairs derived from the triplets
    assert metrics["base"]["pairs"]["n"] == 6
    assert "1 triplets of other domains skipped" in metrics["sets"]["triplets-triplets"]["notes"]
    assert not list(out.glob("*.png"))


def test_holdout_triplets_of_training_queries_are_an_error(run_cli, tiny_model, tmp_path):
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    train = ["sort a list in python", "merge two dictionaries"]
    held = ["reverse a list in python", "convert a string to an integer", "read a file line by line"]
    (prepared / "train.jsonl").write_text("".join(json.dumps({"id": f"t{i}", "query": q}) + "\n"
                                                  for i, q in enumerate(train)))
    (prepared / "holdout.jsonl").write_text("".join(json.dumps({"id": f"h{i}", "query": q}) + "\n"
                                                    for i, q in enumerate(held)))
    triplets = [
        {"anchor": "how can I reverse a list", "positive": held[0], "negative": "sort a list descending"},
        {"anchor": "turn a str into an int", "positive": held[1], "negative": "turn an int into a str"},
        {"anchor": "iterate over lines of a file", "positive": held[2], "negative": "write lines to a file"},
        {"anchor": "order a list", "positive": "Sort a list in Python", "negative": "shuffle a list"},  # leak
    ]
    (prepared / "holdout_triplets.jsonl").write_text("".join(json.dumps(t) + "\n" for t in triplets))
    out = tmp_path / "out"
    # A held-out triplet made from a training query (here a reworded copy of one: prepare's
    # near-duplicate rule) is an error naming the query, in the folder or given with --triplets.
    result = run_cli(["evaluate", "--domain", "programming", "--base-model", tiny_model, "--holdout", prepared,
                      "--no-domain-sets", "--bootstrap", "0", "--no-plots", "--output", out])
    err = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(err) == 1 and "'Sort a list in Python'" in err[0]
    assert "holdout_triplets.jsonl" in err[0] and "training query" in err[0]
    (prepared / "holdout_triplets.jsonl").rename(tmp_path / "given.jsonl")
    result = run_cli(["evaluate", "--domain", "programming", "--base-model", tiny_model, "--holdout", prepared,
                      "--triplets", tmp_path / "given.jsonl", "--no-domain-sets", "--output", out])
    assert result.exit_code == 1 and "given.jsonl" in result.stderr and "'Sort a list in Python'" in result.stderr
    (prepared / "holdout_triplets.jsonl").write_text("".join(json.dumps(t) + "\n" for t in triplets[:3]))
    result = run_cli(["evaluate", "--domain", "programming", "--base-model", tiny_model, "--holdout", prepared,
                      "--no-domain-sets", "--bootstrap", "0", "--no-plots", "--output", out])
    assert result.exit_code == 0, result.stderr
    entry = json.loads((out / "metrics.json").read_text())["sets"]["holdout-triplets"]
    assert entry["rows"] == 3

    (prepared / "holdout_triplets.jsonl").unlink()
    result = run_cli(["evaluate", "--domain", "programming", "--base-model", tiny_model, "--holdout", prepared,
                      "--no-domain-sets", "--output", tmp_path / "out2"])
    assert result.exit_code == 1
    assert "nothing held out to evaluate" in result.stderr and str(prepared) in result.stderr


# -- plugins: evaluation sets and their own metrics through the hooks ------------------------------
def _pairs_rows():
    return [
        {"sentence1": "how to boil an egg", "sentence2": "boiling eggs: how long", "label": 1},
        {"sentence1": "how to boil an egg", "sentence2": "how to fry an egg", "label": 0},
        {"sentence1": "best flour for bread", "sentence2": "which flour makes good bread", "label": 1},
        {"sentence1": "best flour for bread", "sentence2": "best flour for cake", "label": 0},
    ]


def _gap(rows, scores):
    s, y = scores["pair"], np.array([r["label"] for r in rows])
    return {"mean_gap": float(s[y == 1].mean() - s[y == 0].mean())}


class EvalPlugin:
    seen_contexts: list = []

    @staticmethod
    def _load(context):
        EvalPlugin.seen_contexts.append(context)
        return _pairs_rows()

    @hookimpl
    def register_domains(self, register):
        register(Domain("cooking-eval", "test domain", "unused.txt", PromptTemplates("s", "p {n} {query}",
                                                                                       "n {n} {query}"),
                        evaluation_sets=(EvaluationSet("own", "pairs", EvalPlugin._load, "the domain's",
                                                       metrics=_gap),
                                         EvaluationSet("absent", "pairs", lambda c: None))))

    @hookimpl
    def register_evaluation_sets(self, register):
        register("cooking-eval", EvaluationSet(
            "extra-triplets", "triplets",
            lambda c: [{"anchor": "boil an egg", "positive": "how to boil an egg", "negative": "how to fry an egg"}],
            metrics=lambda rows, scores: {"n_pos": float(len(scores["pos"]))}))


def test_domain_and_plugin_sets_run_by_default_with_their_metrics(run_cli, tiny_model, tmp_path):
    pm = get_plugin_manager(load_entrypoints=False)
    register_module(pm, EvalPlugin(), "eval-plugin")
    out = tmp_path / "out"
    result = run_cli(["evaluate", "--domain", "cooking-eval", "--base-model", tiny_model, "--limit", "7",
                      "--seed", "3", "--eval-data", tmp_path, "--bootstrap", "0", "--no-plots", "--output", out],
                     pm=pm)
    assert result.exit_code == 0, result.stderr
    assert "skipped evaluation set 'absent'" in result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["sets"]) == ["own", "extra-triplets"]
    assert metrics["skipped"] == [{"set": "absent", "reason": "its data is not available"}]
    own = metrics["sets"]["own"]["base"]
    assert own["extra"]["mean_gap"] == pytest.approx(own["pairs"]["mean_pos"] - own["pairs"]["mean_neg"])
    assert metrics["sets"]["extra-triplets"]["base"]["extra"] == {"n_pos": 1.0}
    context = EvalPlugin.seen_contexts[-1]
    assert (context.domain, context.limit, context.seed, context.eval_data) == ("cooking-eval", 7, 3, str(tmp_path))
    assert "Metrics of the evaluation set itself" in (out / "report.md").read_text()

    # --no-domain-sets leaves nothing to evaluate here: one clear line.
    result = run_cli(["evaluate", "--domain", "cooking-eval", "--base-model", tiny_model, "--no-domain-sets",
                      "--output", tmp_path / "none"], pm=pm)
    assert result.exit_code == 1 and result.stderr.startswith("Error: nothing to evaluate")


# -- the registry: --adapter NAME and --register-metrics -----------------------------------------
def test_registry_name_and_register_metrics(run_cli, adapter_dir, tmp_path):
    from cachetune.registry import AdapterRegistry

    registry = tmp_path / "registry"
    AdapterRegistry(registry).add(adapter_dir, name="med-test")
    out = tmp_path / "out"
    result = run_cli(["evaluate", "--domain", "medical", "--adapter", "med-test", "--registry", registry,
                      "--pairs", MQP, *MQP_COLUMNS, "--no-domain-sets", "--bootstrap", "50", "--no-plots",
                      "--register-metrics", "--output", out])
    assert result.exit_code == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["models"]["adapter"]["name"] == "med-test@1"
    record = AdapterRegistry(registry).get("med-test")
    assert record["calibrated_threshold"] == pytest.approx(metrics["adapter"]["pairs"]["calibrated_threshold"])
    assert record["metrics"]["adapter"]["pairs"]["ap"] == pytest.approx(metrics["adapter"]["pairs"]["ap"])
    assert record["metrics"]["metrics_file"] == str((out / "metrics.json").resolve())

    result = run_cli(["evaluate", "--domain", "medical", "--adapter", "nope", "--registry", registry,
                      "--pairs", MQP, *MQP_COLUMNS, "--no-domain-sets", "--output", tmp_path / "o2"])
    assert result.exit_code == 1 and "no adapter named 'nope'" in result.stderr
    result = run_cli(["evaluate", "--domain", "medical", "--adapter", adapter_dir, "--register-metrics",
                      "--pairs", MQP, *MQP_COLUMNS, "--no-domain-sets", "--output", tmp_path / "o3"])
    assert result.exit_code == 1 and "--register-metrics needs --adapter NAME" in result.stderr


def test_register_metrics_goes_to_the_version_evaluated(run_cli, adapter_dir, tmp_path):
    """A version registered while `evaluate --adapter NAME` runs gets neither its metrics nor its threshold."""
    from cachetune.registry import AdapterRegistry

    registry = AdapterRegistry(tmp_path / "registry")
    registry.add(adapter_dir, name="race")

    class RegistersMidway:
        @hookimpl
        def register_domains(self, register):
            def load(context):
                registry.add(adapter_dir, name="race")  # version 2 arrives during the evaluation
                return _pairs_rows()

            register(Domain("race-eval", "test domain", "unused.txt",
                            PromptTemplates("s", "p {n} {query}", "n {n} {query}"),
                            evaluation_sets=(EvaluationSet("own", "pairs", load),)))

    pm = get_plugin_manager(load_entrypoints=False)
    register_module(pm, RegistersMidway(), "registers-midway")
    out = tmp_path / "out"
    result = run_cli(["evaluate", "--domain", "race-eval", "--adapter", "race", "--registry", registry.root,
                      "--bootstrap", "0", "--no-plots", "--register-metrics", "--output", out], pm=pm)
    assert result.exit_code == 0, result.stderr
    assert json.loads((out / "metrics.json").read_text())["models"]["adapter"]["name"] == "race@1"
    assert registry.get("race@1")["metrics"]["evaluated"] and registry.get("race@2").get("metrics") is None
    assert "race@1" in result.stderr


def test_a_set_with_one_pair_labelled_both_ways_is_refused(run_cli, tiny_model, tmp_path):
    """A plugin's set holding the same two texts as a positive and a negative: one line naming the set
    and both rows, exit 1, nothing written."""
    rows = _pairs_rows() + [{"sentence1": "Boiling eggs: how long", "sentence2": "how to boil an egg", "label": 0}]

    class Clash:
        @hookimpl
        def register_domains(self, register):
            register(Domain("clash-eval", "test domain", "unused.txt",
                            PromptTemplates("s", "p {n} {query}", "n {n} {query}"),
                            evaluation_sets=(EvaluationSet("own", "pairs", lambda c: rows),)))

    pm = get_plugin_manager(load_entrypoints=False)
    register_module(pm, Clash(), "clash")
    out = tmp_path / "out"
    result = run_cli(["evaluate", "--domain", "clash-eval", "--base-model", tiny_model,
                      "--bootstrap", "0", "--no-plots", "--output", out], pm=pm)
    assert result.exit_code == 1
    assert ("evaluation set 'own': rows 0 and 4 hold the same two texts labelled 1 and 0: one of the labels "
            "is wrong") in result.stderr
    assert not out.exists()
