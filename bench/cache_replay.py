"""Replay a domain's held-out human pairs through a real redisvl SemanticCache: base model vs adapter.

The cached side of every pair is stored with a dummy answer naming its question; the other side
is looked up (one `SemanticCache.check` per query, embedding included). Each model runs at its
own stored threshold: the adapter's `calibrated_threshold` and the base model's, both written by
`cachetune evaluate --register-metrics`. Prints, per model: right answers served, wrong answers
served, misses, lookups/s. Redis is started as the tests start it (tests/redis_server.py).

- programming: CoNaLa curated pairs of the 10% of questions held out by `split_pairs` (seed 0),
  the split the adapter's training triplets leave out; cached = intent, looked up = its human
  rewrite; right = the same question's answer.
- medical: RQE test (302 published pairs, 301 read: see read_rqe); cached = the FAQ, looked up = the consumer
  question; right = an FAQ labelled true for it (any hit on a question with no true FAQ is wrong).

    python bench/cache_replay.py --domain programming --train --work runs/replay-programming
    python bench/cache_replay.py --domain medical --train --work runs/replay-medical
    python bench/cache_replay.py --domain D --registry REG --adapter NAME --work DIR  # an evaluated adapter
    python bench/cache_replay.py --domain medical --registry runs/replay-medical/reg --adapter medical@1 \
        --work runs/replay-medical --recalibrate --target-precision 0.9   # the trained adapter, another target

`--train` first builds triplets from the domain's human training pairs (CoNaLa train split;
RQE train positives whose two sides differ and that share no text with RQE test), trains a LoRA
for `--steps` steps, registers it, and evaluates it with `--register-metrics` on the held-out
set above, which is where both thresholds come from.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # redis_server.py: the same Redis the tests start
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
DATA = REPO.parent / "shared" / "data"


def replay_set(domain: str, data: Path):
    """``(cached, lookups)``: [(text, answer)], [(text, set of right answers)]."""
    if domain == "programming":
        from cachetune.domains.programming.training_pairs import read_conala_pairs, split_pairs

        _, held = split_pairs(read_conala_pairs(data / "conala" / "conala-train.json"), 0.1, 0)
        cached = {p.query: p.group for p in held}
        right = defaultdict(set)
        for p in held:
            right[p.paraphrase].add(p.group)
    else:
        from cachetune.domains.medical.evaluation import read_rqe

        rows = read_rqe(next((data / "rqe").glob("RQE_Test*.xml")))
        cached = {}
        for row in rows:
            cached.setdefault(row["sentence2"], f"faq-{len(cached)}")
        right = defaultdict(set)
        for row in rows:
            answers = right[row["sentence1"]]
            if row["label"] == 1:
                answers.add(cached[row["sentence2"]])
    return list(cached.items()), list(right.items())


def training_triplets(domain: str, data: Path, work: Path, base_model: str) -> dict:
    """Triplet files built from the domain's human training pairs (mined negatives)."""
    from cachetune.core.jsonl import write_jsonl
    from cachetune.core.text import exact_key
    from cachetune.domains.programming.training_pairs import Pair, conala_triplet_files, triplets_from_pairs

    if domain == "programming":
        return conala_triplet_files(data / "conala" / "conala-train.json", work / "data",
                                    base_model=base_model)["paths"]
    from cachetune.domains.medical.evaluation import read_rqe

    test_texts = {exact_key(t) for r in read_rqe(next((data / "rqe").glob("RQE_Test*.xml")))
                  for t in (r["sentence1"], r["sentence2"])}
    pairs = [Pair(r["sentence2"], r["sentence1"], r["sentence2"])
             for r in read_rqe(next((data / "rqe").glob("RQE_Train*.xml")))
             if r["label"] == 1 and exact_key(r["sentence1"]) != exact_key(r["sentence2"])
             and not {exact_key(r["sentence1"]), exact_key(r["sentence2"])} & test_texts]
    paths = {"train": work / "data" / "train_triplets.jsonl"}
    write_jsonl(paths["train"], triplets_from_pairs(pairs, domain, base_model=base_model))
    return paths


def train_and_register(args, base_model: str) -> str:
    from cachetune.core.train.loop import TrainConfig, train
    from cachetune.registry import AdapterRegistry

    paths = training_triplets(args.domain, args.data, args.work, base_model)
    started = time.perf_counter()
    card = train(TrainConfig(args.domain, paths["train"], args.work / "adapter", base_model=base_model,
                             batch_size=32, max_steps=args.steps, threads=args.threads, overwrite=True),
                 show_progress=False)
    print(f"trained {card['results']['steps']} steps in {time.perf_counter() - started:.0f} s")
    record = AdapterRegistry(args.registry).add(args.work / "adapter")
    store_thresholds(args, record["ref"])
    return record["ref"]


def store_thresholds(args, ref: str) -> None:
    """`cachetune evaluate --register-metrics` on the replayed questions: both stored thresholds."""
    from cachetune.core.cli import main

    holdout = args.work / "data" / "holdout_triplets.jsonl"
    held = (["--triplets", str(holdout), "--no-domain-sets"] if args.domain == "programming"
            else ["--eval-data", str(next((args.data / "rqe").glob("RQE_Test*.xml")))])
    code = main(["evaluate", "--domain", args.domain, "--adapter", ref, "--registry", str(args.registry),
                 *held, "--bootstrap", "0", "--no-plots", "--register-metrics",
                 "--target-precision", str(args.target_precision),
                 "--output", str(args.work / f"eval-p{args.target_precision:g}")])
    if code:
        raise SystemExit(code)


def replay(name: str, folder: str, cosine, cached, lookups, redis_url: str) -> dict:
    from redisvl.extensions.cache.llm import SemanticCache
    from redisvl.utils.vectorize import HFTextVectorizer

    vectorizer = HFTextVectorizer(model=folder)
    cache = SemanticCache(name=f"replay-{name}", redis_url=redis_url, vectorizer=vectorizer,
                          distance_threshold=1 - cosine, overwrite=True)
    cache.clear()
    texts = [text for text, _ in cached]
    for (text, answer), vector in zip(cached, vectorizer.embed_many(texts, batch_size=64)):
        cache.store(prompt=text, response=answer, vector=vector)
    counts = {"right": 0, "wrong": 0, "miss": 0}
    started = time.perf_counter()
    for text, right in lookups:
        hits = cache.check(prompt=text, num_results=1)
        counts["miss" if not hits else "right" if hits[0]["response"] in right else "wrong"] += 1
    counts["lookups_per_s"] = len(lookups) / (time.perf_counter() - started)
    cache.delete()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domain", choices=["programming", "medical"], required=True)
    parser.add_argument("--data", type=Path, default=DATA, help="The shared data folder (conala/, rqe/).")
    parser.add_argument("--registry", type=Path, help="Registry (default with --train: WORK/reg).")
    parser.add_argument("--adapter", help="A registered adapter evaluated with --register-metrics.")
    parser.add_argument("--train", action="store_true", help="Train, register and evaluate an adapter first.")
    parser.add_argument("--recalibrate", action="store_true",
                        help="Evaluate --adapter again with --register-metrics at --target-precision first "
                             "(a trained adapter's thresholds for another target).")
    parser.add_argument("--work", type=Path, default=Path("runs/replay"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--target-precision", type=float, default=0.95)
    parser.add_argument("--threads", type=int, default=1,
                        help="Torch threads (1: a cache looks up one query at a time; more threads spin on it).")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)

    from cachetune.core.models import embedded_model_path
    from cachetune.registry import AdapterRegistry
    from redis_server import RedisServer

    base_model = embedded_model_path()
    args.registry = args.registry or (args.work / "reg" if args.train else None)
    ref = train_and_register(args, base_model) if args.train else args.adapter
    if not ref:
        parser.error("--adapter NAME or --train")
    if args.recalibrate and not args.train:
        store_thresholds(args, ref)
    reg = AdapterRegistry(args.registry)
    record = reg.get(ref)
    merged = args.work / "merged" / record["ref"].replace("@", "-")
    if not merged.exists():
        reg.export_merged(record["ref"], merged)
    base_t = ((record.get("metrics") or {}).get("base") or {}).get("pairs", {}).get("calibrated_threshold")
    models = [("base", base_model, base_t), (record["ref"], str(merged), record.get("calibrated_threshold"))]

    cached, lookups = replay_set(args.domain, args.data)
    answerable = sum(1 for _, right in lookups if right)
    print(f"{args.domain}: {len(cached)} cached questions, {len(lookups)} lookups ({answerable} have a right answer)")
    print(f"| model | threshold (cosine) | right served | wrong served | misses | lookups/s |")
    print("|---|---|---|---|---|---|")
    with RedisServer() as server:
        for name, folder, cosine in models:
            if cosine is None:
                print(f"| {name} | none stored | - | - | - | - |")
                continue
            r = replay(name.replace("@", "-"), folder, cosine, cached, lookups, server.url)
            print(f"| {name} | {cosine:.3f} | {r['right']} | {r['wrong']} | {r['miss']} | {r['lookups_per_s']:.0f} |")


if __name__ == "__main__":
    main()
