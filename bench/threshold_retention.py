"""Does the stored threshold keep its precision on pairs it has never seen? In-sample vs out-of-sample.

    python bench/threshold_retention.py                                   # base model, both domains
    python bench/threshold_retention.py --adapter programming=runs/replay-programming/adapter \
        --adapter medical=runs/replay-medical/adapter   # adapters trained by bench/cache_replay.py --train

An adapter must not have trained on the pairs it is measured on: each adapter row first says how
many of the pairs' texts its training file (named in its card) holds.

For each domain's packaged human pairs (CoNaLa held-out questions, RQE test) and each model, the
pairs are split in half at random (stratified), --splits times. On the calibration half both
rules choose a threshold for --target-precision: the in-sample one (the lowest threshold whose
precision on those pairs reaches the target) and the stored one (chosen out of sample,
:mod:`cachetune.core.evaluate.calibration`). The other half, never seen by either, measures the
precision and hit rate each threshold keeps. Printed: the thresholds on all pairs (what
`evaluate` stores), the means over the splits, and in how many splits each rule kept precision
>= target - 0.02 on the unseen half. A split whose stored rule finds the target unsupported
stores no threshold: it serves no wrong answer and counts as kept, with hit rate 0.
"""

from __future__ import annotations

import argparse

import numpy as np


def pair_scores(domain: str, adapter, rows) -> np.ndarray:
    from cachetune.core.adapters import load_adapter_model
    from cachetune.core.models import DEFAULT_BASE_MODEL, load_sentence_transformer

    model = load_adapter_model(adapter, device="cpu") if adapter else load_sentence_transformer(
        DEFAULT_BASE_MODEL, device="cpu")
    texts = list(dict.fromkeys([r["sentence1"] for r in rows] + [r["sentence2"] for r in rows]))
    emb = model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    at = {t: i for i, t in enumerate(texts)}
    return np.array([float(emb[at[r["sentence1"]]] @ emb[at[r["sentence2"]]]) for r in rows])


def texts_trained_on(adapter, rows) -> str:
    """How many of the pairs' texts the adapter's training file holds (its card names the file):
    an adapter evaluated on its own training texts would flatter both thresholds."""
    import json
    from pathlib import Path

    from cachetune.core.adapters import read_card
    from cachetune.core.text import near_key

    data = (read_card(adapter).get("data") or {}).get("path")
    if not data or not Path(data).is_file():
        return "training file unknown"
    trained = set()
    for line in Path(data).read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        trained |= {near_key(row[k]) for k in ("anchor", "positive", "negative", "sentence1", "sentence2") if k in row}
    texts = {near_key(r[k]) for r in rows for k in ("sentence1", "sentence2")}
    return f"{len(texts & trained)} of the {len(texts)} pair texts in its training file"


def kept_on(scores, labels, threshold):
    """(precision, hit rate) at ``threshold`` on these pairs; no threshold serves nothing."""
    if threshold is None:
        return None, 0.0
    hit = scores >= threshold
    tp = int(np.sum(hit & (labels == 1)))
    return (tp / int(hit.sum()) if hit.any() else None), tp / int(np.sum(labels == 1))


def half_splits(labels, n, seed):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        calib = np.zeros(labels.size, dtype=bool)
        for value in (0, 1):
            idx = rng.permutation(np.flatnonzero(labels == value))
            calib[idx[: idx.size // 2]] = True
        yield np.flatnonzero(calib), np.flatnonzero(~calib)


def main() -> None:
    from cachetune.core.evaluate.calibration import out_of_sample_threshold
    from cachetune.core.evaluate.metrics import calibrate, rank_pairs
    from cachetune.core.plugin_manager import get_plugin_manager
    from cachetune.core.types import EvaluationContext

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", action="append", default=[], metavar="DOMAIN=DIR")
    parser.add_argument("--target-precision", type=float, default=0.95)
    parser.add_argument("--splits", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    adapters = dict(a.split("=", 1) for a in args.adapter)
    target = args.target_precision
    pm = get_plugin_manager()
    print(f"target precision {target:g}; {args.splits} random halves; kept = precision >= {target - 0.02:.2f} "
          "on the unseen half")
    print(f"{'domain':<12} {'model':<8} {'pairs':>5} | {'thr in-sample':>13} {'thr stored':>10} "
          f"{'kept (CV)':>9} | unseen half: {'P in-sample':>11} {'P stored':>8} {'hit in-s.':>9} "
          f"{'hit stored':>10} {'kept in-s.':>10} {'kept stored':>11}")
    for domain in ("programming", "medical"):
        (eval_set,) = pm.evaluation_sets(domain)
        rows = eval_set.load(EvaluationContext(domain))
        labels = np.array([r["label"] for r in rows])
        for model, adapter in (("base", None), ("adapter", adapters.get(domain))):
            if model == "adapter" and not adapter:
                continue
            if adapter:
                print(f"    adapter {adapter}: {texts_trained_on(adapter, rows)}")
            scores = pair_scores(domain, adapter, rows)
            full = out_of_sample_threshold(scores, labels, target, seed=args.seed)
            cv = (full["retention"] or {}).get("precision")
            stats = {k: [] for k in ("p_in", "p_st", "h_in", "h_st", "k_in", "k_st")}
            for calib, test in half_splits(labels, args.splits, args.seed):
                in_sample = calibrate(rank_pairs(scores[calib], labels[calib]), target)["calibrated_threshold"]
                stored = out_of_sample_threshold(scores[calib], labels[calib], target, seed=args.seed)["threshold"]
                for rule, thr in (("in", in_sample), ("st", stored)):
                    precision, hit = kept_on(scores[test], labels[test], thr)
                    if precision is not None:
                        stats[f"p_{rule}"].append(precision)
                    stats[f"h_{rule}"].append(hit)
                    stats[f"k_{rule}"].append(precision is None or precision >= target - 0.02 - 1e-12)
            mean = {k: (float(np.mean(v)) if v else float("nan")) for k, v in stats.items()}
            thr_st = "none" if full["threshold"] is None else f"{full['threshold']:.4f}"
            print(f"{domain:<12} {model:<8} {len(rows):>5} | {full['in_sample_threshold']:>13.4f} {thr_st:>10} "
                  f"{(cv if cv is not None else float('nan')):>9.3f} | {'':12} {mean['p_in']:>11.3f} "
                  f"{mean['p_st']:>8.3f} {mean['h_in']:>9.3f} {mean['h_st']:>10.3f} "
                  f"{sum(stats['k_in']):>4}/{args.splits:<5} {sum(stats['k_st']):>5}/{args.splits:<5}")
            if full["reason"]:
                print(f"    {model}: {full['reason']}")


if __name__ == "__main__":
    main()
