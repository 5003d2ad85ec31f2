"""Learning-rate evidence for ``cachetune train``: held-out margin of base vs adapters.

Builds real triplets from CoNaLa curated (anchor = ``rewritten_intent``, positive = ``intent``,
negative = the nearest other intent by the base model, never of the same question), holds
out ~10% of the questions, trains one adapter per learning rate (1 epoch, sequentially) and
prints a markdown table of held-out margin (mean cos(a,p) - cos(a,n)), triplet accuracy and
recall@1 over all held-out intents, for the base model and each adapter.

    .venv/bin/python bench/lr_sweep.py                      # lrs 2e-5 ... 5e-3, hard negatives
    .venv/bin/python bench/lr_sweep.py --lrs 1e-3 --no-hard-negatives --results nohn.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(REPO.parent / "shared/data/conala/conala-train.json"))
    parser.add_argument("--workdir", default="/tmp/cachetune-lr-sweep")
    parser.add_argument("--lrs", default="2e-5,1e-4,2e-4,5e-4,1e-3,2e-3,5e-3")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--holdout", type=float, default=0.1)
    parser.add_argument("--base-model", default=None)
    parser.add_argument("--no-hard-negatives", action="store_true",
                        help="Train without the hard-negative column (the upstream trainer's behaviour).")
    parser.add_argument("--results", default="lr_sweep.json", help="Results file name inside --workdir.")
    args = parser.parse_args()

    from cachetune.core.models import load_sentence_transformer
    from cachetune.domains.programming.training_pairs import conala_triplet_files
    from cachetune.core.train.config import TrainConfig
    from cachetune.core.train.loop import train
    from cachetune.core.train.scoring import heldout_metrics
    from cachetune.core.train.data import load_triplets

    work = Path(args.workdir)
    model = load_sentence_transformer(args.base_model)
    built = conala_triplet_files(args.source, work / "data", holdout=args.holdout, seed=args.seed, model=model)
    train_path, held_path = built["paths"]["train"], built["paths"]["holdout"]
    print(f"triplets: train {built['counts']['train']} ({built['questions']['train']} questions), "
          f"held out {built['counts']['holdout']} ({built['questions']['holdout']} questions)", flush=True)
    held = load_triplets(held_path)
    rows = [{"run": "base model", **heldout_metrics(model, held.anchors, held.positives, held.negatives)}]
    del model

    hard = not args.no_hard_negatives
    for lr in (float(x) for x in args.lrs.split(",")):
        name = f"lr {lr:g}" + ("" if args.epochs == 1 else f", {args.epochs} epochs") + \
            ("" if hard else ", no hard negatives")
        out = work / (f"adapter-lr{lr:g}-e{args.epochs}" + ("" if hard else "-nohn"))
        started = time.time()
        card = train(TrainConfig(domain="programming", train_data=train_path, output=out, base_model=args.base_model,
                                 epochs=args.epochs, batch_size=args.batch_size, lr=lr, seed=args.seed,
                                 hard_negatives=hard, eval_data=held_path, overwrite=True, checkpoint_every=0),
                     log=lambda msg: print("  " + msg, flush=True), show_progress=False)
        res = card["results"]
        rows.append({"run": name, **res["eval"]["adapter"], "final_loss": res["final_loss"],
                     "train_s": round(time.time() - started, 1), "steps": res["steps"]})
        print(f"{name}: margin {rows[-1]['margin']:+.4f} accuracy {rows[-1]['accuracy']:.4f} "
              f"recall@1 {rows[-1]['recall_at_1']:.4f}", flush=True)

    (work / args.results).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    base = rows[0]
    print()
    print("| run | held-out margin | vs base | triplet accuracy | recall@1 | mean cos(a,p) | final loss | steps |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['run']} | {r['margin']:+.4f} | {r['margin'] - base['margin']:+.4f} | {r['accuracy']:.4f} | "
              f"{r['recall_at_1']:.4f} | {r['cos_anchor_positive']:.4f} | {r.get('final_loss', '')} | "
              f"{r.get('steps', '')} |")
    best = max(rows[1:], key=lambda r: r["margin"])
    print(f"\nbest held-out margin: {best['run']} ({best['margin']:+.4f} vs base {base['margin']:+.4f}); "
          f"{len(held)} held-out triplets; results in {work / args.results}")


if __name__ == "__main__":
    main()
