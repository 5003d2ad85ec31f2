"""Wall time of `cachetune evaluate` on 3,000 real pairs with the base all-MiniLM-L6-v2 on CPU.

    .venv/bin/python bench/evaluate.py [--pairs 3000] [--bootstrap 1000] [--no-naive]

Builds 3,000 labelled pairs from CoNaLa curated (../shared/data): half intent <-> its human
rewrite (label 1), half intent <-> the rewrite of another sampled question (label 0), so texts
repeat across pairs as they do in the domain's own set. Times the whole stage in process --
model load, token counting, encoding, every metric with the bootstrap, plots, report -- and,
for comparison, encoding both sides of every pair without deduplication. Goal: < 60 s.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_pairs(source: Path, n: int, seed: int) -> list:
    from cachetune.domains.programming_eval import _positives

    positives = _positives(json.loads(source.read_text(encoding="utf-8")))
    rng = random.Random(seed)
    sample = rng.sample(positives, n // 2)
    rows = []
    for i, pos in enumerate(sample):
        rows.append((pos["sentence1"], pos["sentence2"], 1))
        other = sample[(i + 1 + rng.randrange(len(sample) - 1)) % len(sample)]
        rows.append((pos["sentence1"], other["sentence2"], 0))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(REPO.parent / "shared/data/conala/conala-train.json"))
    parser.add_argument("--pairs", type=int, default=3000)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-naive", action="store_true", help="Skip the encode-every-pair comparison.")
    args = parser.parse_args()

    import torch

    from cachetune.core.evaluate import evaluate
    from cachetune.core.plugins import get_plugin_manager

    rows = build_pairs(Path(args.source), args.pairs, args.seed)
    work = Path(tempfile.mkdtemp(prefix="cachetune-bench-eval-"))
    pairs_file = work / "pairs.csv"
    with open(pairs_file, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sentence1", "sentence2", "label"])
        writer.writerows(rows)
    domain = get_plugin_manager(load_entrypoints=False).get_domain("programming")
    print(f"{len(rows)} pairs from {args.source}; torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}")

    started = time.perf_counter()
    result = evaluate(domain, work / "out", pairs=[pairs_file], n_bootstrap=args.bootstrap,
                      batch_size=args.batch_size, device="cpu")
    wall = time.perf_counter() - started
    timing = result["timing"]
    pairs = result["base"]["pairs"]
    print(f"evaluate: {wall:.1f} s wall for {len(rows)} pairs ({timing['texts']} distinct texts of "
          f"{2 * len(rows)}): load {timing['load_s']:.1f} s, encode {timing['encode_base_s']:.1f} s, "
          f"metrics+bootstrap {timing['metrics_s']:.1f} s -> {'under' if wall < 60 else 'OVER'} a minute")
    print(f"base L6: AP {pairs['ap']:.4f} {pairs['ci95']['ap']}, AUC {pairs['auc']:.4f}, "
          f"calibrated threshold {pairs['calibrated_threshold']}, hit rate {pairs['hit_rate']:.3f}")

    if not args.no_naive:
        from cachetune.core.models import load_sentence_transformer

        model = load_sentence_transformer(None, device="cpu")
        texts = [t for a, b, _ in rows for t in (a, b)]
        t0 = time.perf_counter()
        model.encode(texts, batch_size=args.batch_size, normalize_embeddings=True, show_progress_bar=False)
        naive = time.perf_counter() - t0
        print(f"encoding all {len(texts)} texts without dedupe: {naive:.1f} s; "
              f"dedupe speed-up of the encode step: {naive / timing['encode_base_s']:.2f}x")


if __name__ == "__main__":
    main()
