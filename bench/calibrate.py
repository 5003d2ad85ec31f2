"""How far a `cachetune calibrate` threshold can be trusted, and what `--suggest` saves in labels.

On a domain's human pairs (CoNaLa: intent <-> human rewording = same question, intent <-> rewording of
another question = different), scored once with the base model (or --adapter DIR):
1. split the pairs in two halves, calibrate on 100 / 300 / 1,000 pairs drawn from one half, and measure
   precision at the chosen threshold on the other, unseen half, over repeated splits: how often the printed
   lower bound is above the unseen precision (goal: at most 10% at 90% confidence);
2. threshold error (distance to the threshold chosen with every label of the half) when labelling N pairs
   picked by `--suggest`'s rule vs N random pairs, as a ratio in one run.

    python bench/calibrate.py --conala ../shared/data/conala/conala-train.json
"""

from __future__ import annotations

import argparse
import json
import random

import numpy as np


def conala_pairs(path):
    rows = json.load(open(path, encoding="utf-8"))
    pairs = sorted({(r["intent"], r["rewritten_intent"]) for r in rows
                    if r.get("rewritten_intent") and r["rewritten_intent"] != r["intent"]})
    random.Random(0).shuffle(pairs)
    out = [(a, b, 1) for a, b in pairs]
    out += [(pairs[i][0], pairs[(i + 1) % len(pairs)][1], 0) for i in range(len(pairs))]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conala", required=True)
    parser.add_argument("--adapter", help="adapter folder (default: the base model alone)")
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--confidence", type=float, default=0.9)
    args = parser.parse_args()

    from cachetune.core.evaluate.calibrate import pair_scores
    from cachetune.core.evaluate.metrics import calibrate, rank_pairs
    from cachetune.core.evaluate.threshold_bound import calibrate_with_bound, informative_pairs
    from cachetune.core.models import load_sentence_transformer

    if args.adapter:
        from cachetune.core.serving.models import load_model

        model = load_model(adapter=args.adapter)
    else:
        model = load_sentence_transformer(None)
    pairs = conala_pairs(args.conala)
    rows = [{"sentence1": a, "sentence2": b, "label": y} for a, b, y in pairs]
    scores = pair_scores(model, rows)
    labels = np.array([y for _, _, y in pairs])
    print(f"{len(pairs)} CoNaLa pairs ({labels.sum()} same-question), scored once")

    rng = np.random.default_rng(0)
    print("\n1. Bound vs precision on the unseen half "
          f"({args.repeats} random splits, confidence {args.confidence:g})")
    print(f"{'target':>6} {'pairs':>5} {'stored':>7} {'threshold':>9} {'bound':>6} {'unseen P':>8} "
          f"{'P<target-0.03':>13} {'bound>unseen':>12}")
    for target in (0.9, 0.95):
        for n in (100, 300, 1000):
            thr, bounds, unseen, over = [], [], [], 0
            for _ in range(args.repeats):
                order = rng.permutation(len(pairs))
                half_a, half_b = order[: len(order) // 2], order[len(order) // 2:]
                sample = rng.choice(half_a, size=n, replace=False)
                cal = calibrate_with_bound(scores[sample], labels[sample], target, args.confidence)
                if cal.threshold is None:
                    continue
                served = scores[half_b] >= cal.threshold
                precision = labels[half_b][served].mean() if served.any() else 1.0
                thr.append(cal.threshold)
                bounds.append(cal.precision_lower_bound)
                unseen.append(precision)
                over += cal.precision_lower_bound > precision
            k = len(thr)
            if not k:
                print(f"{target:>6g} {n:>5} {0:>6.0%}  (target never supported)")
                continue
            low = np.mean(np.array(unseen) < target - 0.03)
            print(f"{target:>6g} {n:>5} {k / args.repeats:>7.0%} {np.mean(thr):>9.3f} {np.mean(bounds):>6.3f} "
                  f"{np.mean(unseen):>8.3f} {low:>13.0%} {over / k:>12.0%}")

    print("\n2. Threshold error: N suggested vs N random labels (target 0.9, in-sample choice, "
          f"{args.repeats} splits)")
    print(f"{'labels':>6} {'random err':>10} {'suggested err':>13} {'ratio':>6}")
    for n in (50, 100, 200, 400):
        err_random, err_suggest = [], []
        for _ in range(args.repeats):
            order = rng.permutation(len(pairs))
            pool, seed_set = order[: len(order) // 2], order[len(order) // 2:]
            truth = calibrate(rank_pairs(scores[pool], labels[pool]), 0.9)["calibrated_threshold"]
            start = rng.choice(seed_set, size=100, replace=False)  # today's threshold, from another sample
            current = calibrate(rank_pairs(scores[start], labels[start]), 0.9)["calibrated_threshold"] or 0.8
            random_pick = rng.choice(pool, size=n, replace=False)
            suggest_pick = pool[informative_pairs(scores[pool], current, n)]
            for pick, errors in ((random_pick, err_random), (suggest_pick, err_suggest)):
                t = calibrate(rank_pairs(scores[pick], labels[pick]), 0.9)["calibrated_threshold"]
                errors.append(abs((t if t is not None else 1.0) - truth))
        print(f"{n:>6} {np.mean(err_random):>10.4f} {np.mean(err_suggest):>13.4f} "
              f"{np.mean(err_random) / max(np.mean(err_suggest), 1e-9):>6.2f}")


if __name__ == "__main__":
    main()
