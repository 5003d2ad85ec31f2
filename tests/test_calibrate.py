"""`cachetune calibrate`: a threshold for the user's own traffic with an honest precision bound."""

from __future__ import annotations

import csv
import json
import random

import numpy as np
import pytest

from cachetune.core.evaluate.threshold_bound import (
    calibrate_with_bound,
    informative_pairs,
    min_served_for,
    precision_lower_bound,
)


def test_clopper_pearson_matches_known_values():
    # Known exact bounds: all 45 of 45 right -> 0.1 ** (1/45) at 90% one-sided confidence.
    assert precision_lower_bound(45, 45, 0.9) == pytest.approx(0.1 ** (1 / 45), rel=1e-9)
    assert precision_lower_bound(0, 10, 0.9) == 0.0
    # 90 of 100: the p at which seeing >= 90 right has probability 10% (binomial tail, by bisection)
    from scipy.stats import binom

    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if binom.sf(89, 100, mid) < 0.1 else (lo, mid)
    assert precision_lower_bound(90, 100, 0.9) == pytest.approx(lo, abs=1e-6)
    assert min_served_for(0.95, 0.9) == 45


def test_too_few_pairs_store_nothing():
    cal = calibrate_with_bound([0.9] * 20 + [0.1] * 20, [1] * 20 + [0] * 20, 0.95, 0.9)
    assert cal.threshold is None and "cannot support" in cal.reason


def test_bound_is_honest_across_resamples():
    """Synthetic traffic with a known precision curve: the bound holds in >= 90% of draws."""
    rng = np.random.default_rng(0)
    target, misses, draws = 0.9, 0, 200
    for _ in range(draws):
        labels = rng.random(400) < 0.5
        scores = np.where(labels, rng.normal(0.75, 0.1, 400), rng.normal(0.5, 0.1, 400))
        cal = calibrate_with_bound(scores, labels.astype(int), target, 0.9)
        if cal.threshold is None:
            continue
        big = rng.random(200_000) < 0.5
        big_scores = np.where(big, rng.normal(0.75, 0.1, big.size), rng.normal(0.5, 0.1, big.size))
        served = big_scores >= cal.threshold
        misses += big[served].mean() < target
    assert misses / draws <= 0.1


def test_informative_pairs_sit_around_the_threshold():
    scores = np.linspace(0, 1, 1001)
    picked = informative_pairs(scores, 0.6, 50)
    assert len(picked) == 50
    chosen = scores[picked]
    assert chosen.min() < 0.6 < chosen.max() and np.abs(chosen - 0.6).max() <= 0.051


def _write_pairs(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sentence1", "sentence2", "label"])
        writer.writerows(rows)


def conala_pairs(shared_data, n):
    """Human rewordings (label 1) and a rewording of another question (label 0), real CoNaLa."""
    rows = json.loads((shared_data / "conala" / "conala-train.json").read_text(encoding="utf-8"))
    pairs = list({(r["intent"], r["rewritten_intent"]) for r in rows
                  if r.get("rewritten_intent") and r["rewritten_intent"] != r["intent"]})
    pairs.sort()
    random.Random(0).shuffle(pairs)
    pairs = pairs[:n]
    out = [(a, b, 1) for a, b in pairs]
    out += [(pairs[i][0], pairs[(i + 1) % len(pairs)][1], 0) for i in range(len(pairs))]
    return out


def hard_pairs(model, shared_data, skip):
    """Same positives style, but each negative is the most similar rewording of *another* question
    under the model: a harder traffic mix than `conala_pairs`, so its scores sit higher."""
    from cachetune.core.models import encode

    rows = json.loads((shared_data / "conala" / "conala-train.json").read_text(encoding="utf-8"))
    pairs = sorted({(r["intent"], r["rewritten_intent"]) for r in rows
                    if r.get("rewritten_intent") and r["rewritten_intent"] != r["intent"]} - skip)
    random.Random(2).shuffle(pairs)
    pairs = pairs[:1200]
    a = encode(model, [p[0] for p in pairs])
    b = encode(model, [p[1] for p in pairs])
    sims = a @ b.T
    np.fill_diagonal(sims, -1)
    out = [(x, y, 1) for x, y in pairs]
    out += [(pairs[i][0], pairs[int(sims[i].argmax())][1], 0) for i in range(len(pairs))]
    random.Random(3).shuffle(out)
    return out


@pytest.fixture(scope="module")
def registered(tmp_path_factory, embedded_model):
    from make_adapter import make_adapter

    from cachetune.registry import AdapterRegistry

    root = tmp_path_factory.mktemp("registry")
    adapter = make_adapter(embedded_model, tmp_path_factory.mktemp("adapter") / "a", domain="medical", scale=0.01)
    record = AdapterRegistry(root).add(adapter, name="med")
    return root, record["ref"]


@pytest.mark.slow
def test_threshold_from_one_set_misses_on_another_and_calibrate_fixes_it(shared_data, registered, tmp_path,
                                                                          run_cli):
    """Calibrated on CoNaLa pairs with easy negatives, the threshold serves too many wrong answers on
    traffic whose negatives are near misses; calibrated with `calibrate --pairs` on a sample of that
    traffic, it keeps the target on the rest of it."""
    from cachetune.core.evaluate.calibrate import pair_scores
    from cachetune.core.serving.models import load_model

    root, ref = registered
    target = 0.9
    easy = conala_pairs(shared_data, 600)
    conala = tmp_path / "conala.csv"
    _write_pairs(conala, easy)
    result = run_cli(["calibrate", ref, "--pairs", str(conala), "--registry", str(root), "--name", "conala",
                      "--target-precision", str(target), "--json"])
    assert result.exit_code == 0, result.stderr
    conala_threshold = json.loads(result.stdout)["threshold"]

    model = load_model(adapter=ref, registry=root)
    other = hard_pairs(model, shared_data, {(a, b) for a, b, _ in easy})
    sample, rest = other[:1000], other[1000:]
    rest_rows = [{"sentence1": a, "sentence2": b, "label": y} for a, b, y in rest]
    scores, labels = pair_scores(model, rest_rows), np.array([y for _, _, y in rest])

    def precision_at(t):
        return labels[scores >= t].mean()

    assert precision_at(conala_threshold) < target - 0.03  # does not transfer

    own = tmp_path / "own-sample.csv"
    _write_pairs(own, sample)
    report = tmp_path / "report"
    result = run_cli(["calibrate", ref, "--pairs", str(own), "--registry", str(root), "--name", "own",
                      "--target-precision", str(target), "--report", str(report), "--json"])
    assert result.exit_code == 0, result.stderr
    calibrated = json.loads(result.stdout)
    assert precision_at(calibrated["threshold"]) >= target
    assert calibrated["precision_lower_bound"] >= target
    assert (report / "calibration.png").stat().st_size > 1000 and "Stored threshold" in (report / "report.md").read_text()
    # stored, selected and served
    assert load_model(adapter=ref, registry=root).cachetune_adapter.calibrated_threshold == calibrated["threshold"]
    back = run_cli(["calibrate", ref, "--registry", str(root), "--select", "conala"])
    assert back.exit_code == 0 and load_model(adapter=ref, registry=root).cachetune_adapter.calibrated_threshold == \
        conala_threshold


@pytest.mark.slow
def test_unsupported_target_stores_nothing_and_suggest_writes_pairs(shared_data, registered, tmp_path, run_cli):
    from cachetune.registry import AdapterRegistry

    root, ref = registered
    small = tmp_path / "small.csv"
    _write_pairs(small, conala_pairs(shared_data, 15))
    before = AdapterRegistry(root).get(ref)
    result = run_cli(["calibrate", ref, "--pairs", str(small), "--registry", str(root), "--name", "tiny"])
    assert result.exit_code == 1 and "cannot support" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert AdapterRegistry(root).get(ref).get("calibrations") == before.get("calibrations")

    log = tmp_path / "log.jsonl"
    queries = [a for a, _, y in conala_pairs(shared_data, 120) if y == 1] + \
              [b for _, b, y in conala_pairs(shared_data, 120) if y == 1]
    log.write_text("".join(json.dumps({"query": q}) + "\n" for q in queries), encoding="utf-8")
    out = tmp_path / "to_label.csv"
    result = run_cli(["calibrate", ref, "--suggest", "20", "--queries", str(log), "--output", str(out),
                      "--registry", str(root), "--threshold", "0.7"])
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert len(rows) == 20 and all(r["label"] == "" for r in rows)
    scores = sorted(float(r["score"]) for r in rows)
    assert scores[0] < 0.7 < scores[-1]
    again = run_cli(["calibrate", ref, "--suggest", "20", "--queries", str(log), "--output", str(out),
                     "--registry", str(root), "--threshold", "0.7"])
    assert again.exit_code != 0 and "--overwrite" in again.stderr
