"""How far a `cachetune calibrate` threshold can be trusted, and what `--suggest` saves in labels.

On a domain's human pairs (CoNaLa: intent <-> human rewording = same question, intent <-> rewording of
another question = different), scored once with the base model (or --adapter DIR):
1. split the pairs in two halves, calibrate on 100 / 300 / 1,000 pairs drawn from one half, and measure
   precision at the chosen threshold on the other, unseen half, over repeated splits: how often the stated
   lower bound (the target) is above the unseen precision (goal: at most 10% at 90% confidence), beside
   how often the exact bound at the chosen threshold alone would have been, and how often the target is
   above the precision of all pairs when the sample is drawn from all of them (the guarantee itself,
   without the unseen half's own sampling noise);
2. threshold error (distance to the threshold chosen with every label of the half) when labelling N pairs
   sampled by `--suggest` (weighted by 1 / inclusion probability) vs N random pairs, in one run;
3. `calibrate` on 300 suggested pairs, weighted: the same check as 1.

    python bench/calibrate.py --conala ../shared/data/conala/conala-train.json
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np


def conala_pairs(path):
    rows = json.load(open(path, encoding="utf-8"))
    pairs = sorted({(r["intent"], r["rewritten_intent"]) for r in rows
                    if r.get("rewritten_intent") and r["rewritten_intent"] != r["intent"]})
    random.Random(0).shuffle(pairs)
    out = [(a, b, 1) for a, b in pairs]
    out += [(pairs[i][0], pairs[(i + 1) % len(pairs)][1], 0) for i in range(len(pairs))]
    return out


def scored_pairs(args):
    """Scores and labels of the CoNaLa pairs, encoded once (or read back from --scores-cache)."""
    key = f"{Path(args.conala).resolve()}|{args.adapter}"
    cache = Path(args.scores_cache) if args.scores_cache else None
    if cache and cache.exists():
        saved = np.load(cache)
        if str(saved["key"]) == key:
            return saved["scores"], saved["labels"]
    from cachetune.core.evaluate.calibrate import pair_scores
    from cachetune.core.models import load_sentence_transformer

    if args.adapter:
        from cachetune.core.serving.models import load_model

        model = load_model(adapter=args.adapter)
    else:
        model = load_sentence_transformer(None)
    pairs = conala_pairs(args.conala)
    scores = pair_scores(model, [{"sentence1": a, "sentence2": b, "label": y} for a, b, y in pairs])
    labels = np.array([y for _, _, y in pairs])
    if cache:
        np.savez(cache, key=key, scores=scores, labels=labels)
    return scores, labels


def halves(rng, size):
    order = rng.permutation(size)
    return order[: size // 2], order[size // 2:]


def unseen_precision(scores, labels, threshold):
    served = scores >= threshold
    return labels[served].mean() if served.any() else 1.0


def bound_vs_unseen(scores, labels, rng, repeats, confidence):
    """Part 1. Rates are over all splits: a split where the target is not supported states no bound, so
    it cannot break one (the guarantee: nothing stored, or precision >= target)."""
    from cachetune.core.evaluate.threshold_bound import calibrate_with_bound, precision_lower_bound

    print("\n1. Stated bound vs precision on the unseen half "
          f"({repeats} random splits, confidence {confidence:g}); last column: {repeats} samples drawn from all "
          "pairs, bound vs the precision of all pairs (no measurement noise)")
    print(f"{'target':>6} {'pairs':>5} {'supported':>9} {'threshold':>9} {'unseen P':>8} {'P<target-0.03':>13} "
          f"{'stated bound>unseen':>19} {'bound at t alone>unseen':>23} {'stated bound>all pairs':>22}")
    for target in (0.9, 0.95):
        for n in (100, 300, 1000):
            thr, unseen, over, over_alone, over_all = [], [], 0, 0, 0
            for _ in range(repeats):
                seen, rest = halves(rng, len(scores))
                sample = rng.choice(seen, size=n, replace=False)
                cal = calibrate_with_bound(scores[sample], labels[sample], target, confidence)
                drawn = rng.integers(0, len(scores), n)
                other = calibrate_with_bound(scores[drawn], labels[drawn], target, confidence)
                if other.threshold is not None:
                    over_all += target > unseen_precision(scores, labels, other.threshold)
                if cal.threshold is None:
                    continue
                precision = unseen_precision(scores[rest], labels[rest], cal.threshold)
                alone = precision_lower_bound(round(cal.precision_observed * cal.served), cal.served, confidence)
                thr.append(cal.threshold)
                unseen.append(precision)
                over += cal.precision_lower_bound > precision
                over_alone += alone > precision
            if not thr:
                print(f"{target:>6g} {n:>5} {0:>9.0%}  (target never supported)")
                continue
            low = np.sum(np.array(unseen) < target - 0.03) / repeats
            print(f"{target:>6g} {n:>5} {len(thr) / repeats:>9.0%} {np.mean(thr):>9.3f} {np.mean(unseen):>8.3f} "
                  f"{low:>13.0%} {over / repeats:>19.0%} {over_alone / repeats:>23.0%} {over_all / repeats:>22.0%}")


def suggested_vs_random(scores, labels, rng, repeats, target=0.9):
    from cachetune.core.evaluate.label_sampling import inclusion_probabilities, precision_threshold, systematic_sample

    print(f"\n2. Threshold error: N suggested (weighted) vs N random labels (target {target:g}, point estimate, "
          f"{repeats} splits; today's threshold from 100 other labelled pairs)")
    sizes = (50, 100, 200, 400, 800)
    errors = {n: ([], []) for n in sizes}
    for _ in range(repeats):
        pool, other = halves(rng, len(scores))
        truth = precision_threshold(scores[pool], labels[pool], target)
        start = rng.choice(other, size=100, replace=False)
        current = precision_threshold(scores[start], labels[start], target) or 0.8
        p = None
        for n in sizes:
            pick = rng.choice(pool, size=n, replace=False)
            t_random = precision_threshold(scores[pick], labels[pick], target)
            p = inclusion_probabilities(scores[pool], current, n)
            pick = systematic_sample(scores[pool], p, int(rng.integers(1 << 31)))
            t_suggest = precision_threshold(scores[pool][pick], labels[pool][pick], target, 1 / p[pick])
            for t, errs in ((t_random, errors[n][0]), (t_suggest, errors[n][1])):
                errs.append(abs((t if t is not None else 1.0) - truth))
    mean = {n: (np.mean(r), np.mean(s)) for n, (r, s) in errors.items()}
    print(f"{'labels':>6} {'random err':>10} {'suggested err':>13} {'ratio':>6} {'suggested with half':>19}")
    for n in sizes:
        half = f"{mean[n // 2][1]:.4f} ({mean[n][0] / mean[n // 2][1]:.2f})" if n // 2 in mean else "-"
        print(f"{n:>6} {mean[n][0]:>10.4f} {mean[n][1]:>13.4f} {mean[n][0] / mean[n][1]:>6.2f} {half:>19}")


def weighted_bound_vs_unseen(scores, labels, rng, repeats, confidence, n=300):
    from cachetune.core.evaluate.label_sampling import inclusion_probabilities, precision_threshold, systematic_sample
    from cachetune.core.evaluate.threshold_bound import calibrate_with_bound

    print(f"\n3. calibrate on {n} suggested pairs, weighted ({repeats} splits, confidence {confidence:g})")
    print(f"{'target':>6} {'supported':>9} {'threshold':>9} {'unseen P':>8} {'P<target-0.03':>13} "
          f"{'stated bound>unseen':>19}")
    for target in (0.9, 0.95):
        thr, unseen = [], []
        for _ in range(repeats):
            seen, rest = halves(rng, len(scores))
            start = rng.choice(rest, size=100, replace=False)
            current = precision_threshold(scores[start], labels[start], target) or 0.8
            p = inclusion_probabilities(scores[seen], current, n)
            pick = systematic_sample(scores[seen], p, int(rng.integers(1 << 31)))
            cal = calibrate_with_bound(scores[seen][pick], labels[seen][pick], target, confidence,
                                       weights=1 / p[pick])
            if cal.threshold is not None:
                thr.append(cal.threshold)
                unseen.append(unseen_precision(scores[rest], labels[rest], cal.threshold))
        unseen = np.array(unseen)
        if not len(thr):
            print(f"{target:>6g} {0:>9.0%}  (target never supported)")
            continue
        print(f"{target:>6g} {len(thr) / repeats:>9.0%} {np.mean(thr):>9.3f} {unseen.mean():>8.3f} "
              f"{np.sum(unseen < target - 0.03) / repeats:>13.0%} {np.sum(target > unseen) / repeats:>19.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conala", required=True)
    parser.add_argument("--adapter", help="adapter folder (default: the base model alone)")
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--confidence", type=float, default=0.9)
    parser.add_argument("--scores-cache", help="an .npz to keep the pair scores in between runs")
    args = parser.parse_args()

    scores, labels = scored_pairs(args)
    print(f"{len(scores)} CoNaLa pairs ({labels.sum()} same-question), scored once")
    rng = np.random.default_rng(0)
    bound_vs_unseen(scores, labels, rng, args.repeats, args.confidence)
    suggested_vs_random(scores, labels, rng, args.repeats)
    weighted_bound_vs_unseen(scores, labels, rng, args.repeats, args.confidence)


if __name__ == "__main__":
    main()
