"""`cachetune calibrate` end to end: the real model with a real LoRA, the packaged CoNaLa held-out pairs,
a named calibration stored on the registry record, `--select` switching what is served.

The expected threshold is recomputed here from scratch: the pairs scored by sentence-transformers with
the adapter attached by peft, and the fixed-sequence walk written with scipy's binomial tail (a grid
threshold passes when seeing at least that many right pairs would have probability at most
1 - confidence if precision were only the target).
"""

from __future__ import annotations

import json
import math
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from cachetune.registry import AdapterRegistry
from make_adapter import make_adapter

PAIRS = Path(__file__).resolve().parent.parent / "cachetune/domains/programming/data/eval/conala_heldout_pairs.jsonl"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory, embedded_model):
    root = tmp_path_factory.mktemp("calibrate")
    reg = AdapterRegistry(root / "reg")
    adapter = make_adapter(embedded_model, root / "prog", "programming", seed=5, scale=0.02)
    reg.add(adapter)
    return reg, _scores_by_hand(embedded_model, adapter)


def _scores_by_hand(embedded_model, adapter):
    from peft import PeftModel
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(embedded_model, device="cpu")
    model[0].auto_model = PeftModel.from_pretrained(model[0].auto_model, str(adapter))
    rows = [json.loads(line) for line in PAIRS.read_text(encoding="utf-8").splitlines()]
    norm = [[unicodedata.normalize("NFC", " ".join(r[k].split())) for k in ("sentence1", "sentence2")] for r in rows]
    a = model.encode([n[0] for n in norm], normalize_embeddings=True)
    b = model.encode([n[1] for n in norm], normalize_embeddings=True)
    return (a * b).sum(axis=1), np.array([r["label"] for r in rows])


def _expected_threshold(scores, labels, target, confidence):
    from scipy.stats import binom

    alpha, n = 1 - confidence, len(scores)
    start = max(math.ceil(math.log(alpha) / math.log(target)), math.ceil(0.1 * n))
    chosen = None
    for i in range(800, -801, -1):  # 1.0 down to -1.0 in steps of 0.0025
        t = round(i * 0.0025, 6)
        served = scores >= t
        if served.sum() < start:
            continue
        right = int(labels[served].sum())
        if binom.sf(right - 1, int(served.sum()), target) > alpha:
            break
        chosen = t
        if served.all():  # no lower threshold: no labelled pair vouches for it
            break
    return chosen


def test_calibrate_stores_a_named_calibration_and_select_switches(setup, run_cli):
    from cachetune import load_model

    reg, (scores, labels) = setup
    expected = {target: _expected_threshold(scores, labels, target, 0.9) for target in (0.9, 0.8)}
    assert expected[0.9] is not None and expected[0.8] < expected[0.9]

    args = ["calibrate", "programming", "--pairs", PAIRS, "--confidence", "0.9", "--registry", reg.root]
    first = run_cli([*args, "--target-precision", "0.9", "--name", "strict", "--json"])
    assert first.exit_code == 0, first.stderr
    result = json.loads(first.stdout)
    assert result["threshold"] == pytest.approx(expected[0.9])
    served = scores >= expected[0.9]
    assert result["hit_rate"] == pytest.approx(labels[served].sum() / labels.sum())
    assert result["precision_observed"] == pytest.approx(labels[served].mean())
    assert result["precision_lower_bound"] == 0.9

    second = run_cli([*args, "--target-precision", "0.8", "--name", "loose"])
    assert second.exit_code == 0, second.stderr
    assert f"threshold          {expected[0.8]:.4f}" in second.stdout
    assert "precision          >= 0.8 with 0.9 confidence" in second.stdout

    record = AdapterRegistry(reg.root).get("programming")
    assert [c["name"] for c in record["calibrations"]] == ["strict", "loose"]
    assert record["calibration"] == "loose" and record["calibrated_threshold"] == pytest.approx(expected[0.8])

    switched = run_cli(["calibrate", "programming", "--select", "strict", "--registry", reg.root])
    assert switched.exit_code == 0, switched.stderr
    model = load_model(domain="programming", registry=AdapterRegistry(reg.root), device="cpu")
    assert model.cachetune_adapter.calibrated_threshold == pytest.approx(expected[0.9])


def test_unsupported_target_stores_nothing(setup, run_cli, tmp_path):
    reg, _ = setup
    few = tmp_path / "few.jsonl"
    lines = PAIRS.read_text(encoding="utf-8").splitlines(keepends=True)
    by_label = {y: [line for line in lines if json.loads(line)["label"] == y][:15] for y in (0, 1)}
    few.write_text("".join(by_label[0] + by_label[1]), encoding="utf-8")
    before = AdapterRegistry(reg.root).get("programming").get("calibrations", [])
    result = run_cli(["calibrate", "programming", "--pairs", few, "--target-precision", "0.95", "--name", "x",
                      "--registry", reg.root])
    assert result.exit_code != 0
    assert "cannot support precision 0.95" in result.stderr and "nothing stored" in result.stderr
    assert len([line for line in result.stderr.splitlines() if "nothing stored" in line]) == 1
    assert "Traceback" not in result.stderr
    assert AdapterRegistry(reg.root).get("programming").get("calibrations", []) == before
