"""Benchmark: the llama-cpp backend's default (batched decoding) vs the previous default, through `generate`.

Each configuration runs the whole generate stage (``generate_triplets``: the same prompts, reply
validation, embedding filter and per-request seeds as ``cachetune generate``) on the same real
CoNaLa queries with the same GGUF, after an untimed warm-up that loads the model and evaluates
the shared few-shot prefix:

  instances (previous default)  one single-threaded Llama per core, each answering one request
                                at a time through create_chat_completion (-o parallel 1)
  batched (default)             one single-threaded Llama per core, each decoding 4 requests
                                together in one llama.cpp batch (-o parallel 4)
  batched 1x8                   one Llama on all cores decoding 8 requests together
                                (-o concurrency 1 -o parallel 8)

Queries/s (wall) and queries per CPU-second (this process's CPU time: the work done, steadier
than wall time when other jobs share the cores) and triplets per query are printed per round;
the configurations run in interleaved rounds and each keeps its best round, so load from other
jobs lands on one round of one configuration, not on the ratio; triplets per query are counted
over all rounds. The load average is printed.

    .venv/bin/python bench/generate.py [--queries 16] [--rounds 2] [--model PATH.gguf] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
CONALA = REPO.parent / "shared" / "data" / "conala" / "conala-train.json"


def prepare_queries(n: int, folder: Path) -> Path:
    """``n`` real CoNaLa queries prepared as `cachetune prepare` would (train.jsonl)."""
    from cachetune.core.data.prepare import prepare
    from cachetune.core.plugin_manager import get_plugin_manager

    pm = get_plugin_manager(load_entrypoints=False)
    prepare(pm.get_domain("programming"), folder, source=str(CONALA), limit=n, holdout=0.0)
    return folder / "train.jsonl"


def warm_up(generator, templates) -> None:
    """Load the model(s) and put each kind's few-shot prefix in every instance's cache, untimed."""
    from cachetune.core.generate.prompting import NEGATIVES, PARAPHRASES, Request, build_conversation

    requests = [Request(build_conversation(templates, kind, "reverse a list in python", n), 0, kind, n)
                for kind, n in ((PARAPHRASES, 3), (NEGATIVES, 2))]
    max_tokens, generator.max_tokens = generator.max_tokens, 1
    try:
        generator.generate(requests * generator.workers)
    finally:
        generator.max_tokens = max_tokens


def run_generate(options: dict, queries: Path, output: Path, base_model) -> dict:
    """One timed generate stage with a warmed-up backend; its summary."""
    from cachetune.core.generate.pipeline import GenerateConfig, generate_triplets
    from cachetune.core.generate.prompting import DomainRules
    from cachetune.core.plugin_manager import get_plugin_manager
    from cachetune.plugins.llama_cpp_generator import LlamaCppGenerator

    pm = get_plugin_manager(load_entrypoints=False)
    templates = pm.prompt_templates("programming")
    generator = LlamaCppGenerator(options)
    warm_up(generator, templates)
    config = GenerateConfig(domain="programming", input=queries, output=output, resume=False)
    started, cpu = time.perf_counter(), time.process_time()
    summary = generate_triplets(config, templates, lambda: generator, load_model=lambda _name: base_model,
                                rules=DomainRules.of(pm.get_domain("programming")), generator_options=options)
    summary["bench_wall_s"] = time.perf_counter() - started
    summary["bench_cpu_s"] = time.process_time() - cpu
    return summary


def bench_arguments(description: str, queries: int) -> argparse.Namespace:
    """The options of both generation benchmarks (this one and bench/generate_options.py)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--queries", type=int, default=queries)
    parser.add_argument("--model", default=None, help="GGUF (default: the get-gguf qwen file)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; each keeps its best")
    parser.add_argument("--only", nargs="*", help="run only these configurations")
    return parser.parse_args()


def main() -> None:
    args = bench_arguments(__doc__.split("\n")[0], queries=16)

    from cachetune.core.models import load_sentence_transformer
    from cachetune.plugins.llama_cpp_generator import default_threads, resolve_model

    model = str(resolve_model(args.model))
    base = {"model": model, "temperature": 0.7, "max_tokens": 256}
    cores = default_threads()
    configs = [
        ("instances (previous default)", dict(base, parallel=1)),
        ("batched (default)", dict(base)),
        ("batched 1x8", dict(base, concurrency=1, parallel=8)),
    ]
    configs = [c for c in configs if not args.only or c[0].split(" (")[0] in args.only or c[0] in args.only]
    base_model = load_sentence_transformer(None, device="cpu")
    best: dict = {}  # name: [queries/s, queries per CPU second, triplets, queries] (rates: best round)
    with tempfile.TemporaryDirectory() as tmp:
        queries = prepare_queries(args.queries, Path(tmp) / "prepared")
        n = sum(1 for _ in queries.open())
        print(f"model {Path(model).name}; {n} CoNaLa queries; {os.cpu_count()} CPUs, {cores} physical cores; "
              f"load average {os.getloadavg()[0]:.2f}", flush=True)
        for round_no in range(1, args.rounds + 1):
            for name, options in configs:
                summary = run_generate(options, queries, Path(tmp) / f"out-{round_no}-{name}.jsonl", base_model)
                done = summary["queries_done"]
                qps, per_cpu = done / summary["bench_wall_s"], done / summary["bench_cpu_s"]
                print(f"  round {round_no} {name:30s} {qps:.3f} queries/s  {per_cpu:.3f} queries/CPU-s  "
                      f"{summary['triplets_per_query']:.2f} triplets/query  ({summary['tokens']['completion']} "
                      f"completion tokens, {summary['bench_wall_s']:.0f} s, load {os.getloadavg()[0]:.1f})",
                      flush=True)
                mine = best.setdefault(name, [0.0, 0.0, 0, 0])
                mine[0], mine[1] = max(mine[0], qps), max(mine[1], per_cpu)
                mine[2] += summary["triplets_written"]
                mine[3] += done
    previous = best.get(configs[0][0])
    print(f"best round of {args.rounds} interleaved (load average now {os.getloadavg()[0]:.2f}); "
          f"triplets/query over all rounds:")
    for name, (qps, per_cpu, triplets, done) in best.items():
        ratio = (f"x{qps / previous[0]:.2f} queries/s, x{per_cpu / previous[1]:.2f} per CPU-s, triplets/query "
                 f"{(triplets / done) / (previous[2] / previous[3]):.2f}x") if previous and previous[2] else ""
        print(f"  {name:30s} {qps:.3f} queries/s  {per_cpu:.3f} queries/CPU-s  {triplets / done:.2f} "
              f"triplets/query  {ratio}")
    print(json.dumps({name: {"queries_per_s": round(v[0], 4), "queries_per_cpu_s": round(v[1], 4),
                             "triplets_per_query": round(v[2] / v[3], 3)} for name, v in best.items()}))

if __name__ == "__main__":
    main()
