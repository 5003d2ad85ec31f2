"""The real all-MiniLM-L6-v2 on real pairs: metrics agree with scikit-learn and with an
independent encoding, on CoNaLa (programming), RQE and the MQP-like CSV (medical)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

MQP = Path(__file__).parent / "data" / "medical_question_pairs.csv"


def _scores(path: Path):
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return rows, np.array([int(r["label"]) for r in rows]), np.array([float(r["base"]) for r in rows])


def _check(pairs: dict, labels, scores, target: float):
    assert pairs["ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert pairs["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-300)
    assert pairs["best_f1"] == pytest.approx(f1.max())
    ok = np.flatnonzero(precision[:-1] >= target)
    assert pairs["in_sample_threshold"] == pytest.approx(thresholds[ok[0]])
    # The stored threshold is the in-sample rule for the (higher) inner target the folds chose:
    # sklearn's lowest threshold reaching that inner target, hence never below the in-sample one.
    inner = pairs["calibration_retention"]["inner_target"]
    if inner is None:  # unseen folds never reached the target: nothing stored, the cache never hits
        assert pairs["calibrated_threshold"] is None and not pairs["target_reached"]
        assert pairs["hit_rate"] == pairs["false_hit_rate"] == 0.0
        assert "not supported" in pairs["calibration_retention"]["reason"]
    else:
        assert target <= inner <= 1.0
        ok = np.flatnonzero(precision[:-1] >= inner)
        assert pairs["calibrated_threshold"] == pytest.approx(thresholds[ok[0]])
        assert pairs["calibrated_threshold"] >= pairs["in_sample_threshold"]
        hits = scores >= pairs["calibrated_threshold"]
        assert pairs["hit_rate"] == pytest.approx((hits & (labels == 1)).sum() / (labels == 1).sum())
        assert pairs["false_hit_rate"] == pytest.approx((hits & (labels == 0)).sum() / (labels == 0).sum())
    lo, hi = pairs["ci95"]["ap"]
    assert lo < pairs["ap"] < hi


def _independent(embedded_model, rows):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(embedded_model, device="cpu")
    a = model.encode([r["sentence1"] for r in rows], normalize_embeddings=True, batch_size=32)
    b = model.encode([r["sentence2"] for r in rows], normalize_embeddings=True, batch_size=32)
    return (a * b).sum(1)


@pytest.mark.slow
def test_conala_pairs_with_the_real_model(run_cli, embedded_model, tmp_path, monkeypatch):
    monkeypatch.setenv("CACHETUNE_HOME", str(tmp_path / "home"))
    out = tmp_path / "out"
    result = run_cli(["evaluate", "--domain", "programming", "--limit", "500", "--bootstrap", "300",
                      "--target-precision", "0.9", "--output", out])
    assert result.exit_code == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["models"]["base"]["id"] == "sentence-transformers/all-MiniLM-L6-v2"
    pairs = metrics["base"]["pairs"]
    rows, labels, scores = _scores(out / "scores-conala-rewritten.csv")
    # the packaged held-out set (388 pairs) is smaller than --limit: all of it is scored
    assert pairs["set"] == "conala-rewritten" and pairs["n"] == len(rows) == 388
    _check(pairs, labels, scores, 0.9)
    # The scores themselves: an independent encoding of (a sample of) the same rows.
    np.testing.assert_allclose(scores[::4], _independent(embedded_model, rows[::4]), atol=1e-4)
    # The real model tells rewrites from mined near misses, but far from perfectly.
    assert 0.6 < pairs["auc"] < 0.95


@pytest.mark.slow
def test_rqe_and_mqp_csv_with_the_real_model(run_cli, embedded_model, tmp_path):
    out = tmp_path / "out"
    result = run_cli(["evaluate", "--domain", "medical", "--pairs", MQP, "--columns", "question_1,question_2,label",
                      "--bootstrap", "300", "--output", out])
    assert result.exit_code == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["sets"]) == ["pairs-medical_question_pairs", "rqe-test"]
    assert metrics["base"]["pairs"]["set"] == "pairs-medical_question_pairs"  # explicit input first
    for name in metrics["sets"]:
        rows, labels, scores = _scores(out / f"scores-{name}.csv")
        _check(metrics["sets"][name]["base"]["pairs"], labels, scores, 0.95)
        if name.startswith("pairs-"):
            np.testing.assert_allclose(scores, _independent(embedded_model, rows), atol=1e-4)
    mqp = metrics["sets"]["pairs-medical_question_pairs"]["base"]["pairs"]
    assert mqp["ap"] > 0.7  # the pairs were written to be clear-cut: a sane model must see it
    rqe = metrics["sets"]["rqe-test"]
    assert rqe["rows"] == 301 and rqe["truncated_rows"] >= 1  # 302 published, pid 300 dropped (read_rqe)
    assert any("longer than max_seq_length 256" in note for note in rqe["notes"])
    # Without the mislabelled twin no row ties a true pair with a false one, and the base model gets a
    # medical threshold (with it, the top false hit made precision 0.95 unreachable out of sample).
    rows, labels, scores = _scores(out / "scores-rqe-test.csv")
    top = np.argsort(-scores)[:5]
    assert labels[top].tolist() == [1, 1, 1, 1, 1]
    assert rqe["base"]["pairs"]["calibrated_threshold"] is not None and rqe["base"]["pairs"]["hit_rate"] > 0.15
