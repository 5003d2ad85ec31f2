"""Benchmark: the llama-cpp backend's default (batched decoding) vs the old default, through `generate`.

Each configuration runs the whole generate stage (``generate_triplets``: the same prompts, reply
validation, embedding filter and per-request seeds as ``cachetune generate``) on the same real
CoNaLa queries with the same GGUF, after an untimed warm-up that loads the model and evaluates
the shared few-shot prefix:

  instances (old default)       one single-threaded Llama per core, each answering one request
                                at a time through create_chat_completion (-o parallel 1), both
                                requests of a query sent at once (--ask-together)
  batched 2x4 together          one single-threaded Llama per core, each decoding 4 requests
                                together in one llama.cpp batch (-o parallel 4 --ask-together)
  batched 2x8 together          the same with 8 requests per instance (-o parallel 8
                                --ask-together): the default before requests went in turn
  batched 2x8 in turn           2x8, a query's negatives first and its paraphrases only when a
                                negative could pass (generate's default order)
  batched 2x16 in turn          the same with 16 requests per instance
  batched 2x16 prefill          the same with each reply's JSON opening prefilled (-o prefill true)
  batched (default)             the backend's and generate's defaults (2x16 in turn)
  batched 1x8                   one Llama on all cores decoding 8 requests together
                                (-o concurrency 1 -o parallel 8)
  batched 1x16                  one Llama on all cores decoding 16 requests together

The queries are split into ``--rounds`` disjoint chunks; each round runs every configuration on
its chunk, in an order rotated from round to round, so load from other jobs is spread over all
of them. Per configuration: queries/s over all rounds (wall), queries per CPU-second (this
process's CPU time: the work done, steadier than wall time when other jobs share the cores),
triplets per query, each round's triplets/query (their spread), and, against the old
default, the ratio of triplets per query with a 95% bootstrap interval (queries resampled, the
same queries for both). The load average is printed per run.

    .venv/bin/python bench/generate.py [--queries 48] [--rounds 3] [--skip 0] [--model PATH.gguf] [--only NAME ...]
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


def run_generate(options: dict, queries: Path, output: Path, base_model, ask_together: bool = False) -> dict:
    """One timed generate stage with a warmed-up backend; its summary."""
    from cachetune.core.generate.pipeline import GenerateConfig, generate_triplets
    from cachetune.core.generate.prompting import DomainRules
    from cachetune.core.plugin_manager import get_plugin_manager
    from cachetune.plugins.llama_cpp_generator import LlamaCppGenerator

    pm = get_plugin_manager(load_entrypoints=False)
    templates = pm.prompt_templates("programming")
    generator = LlamaCppGenerator(options)
    warm_up(generator, templates)
    config = GenerateConfig(domain="programming", input=queries, output=output, resume=False,
                            ask_together=ask_together)
    started, cpu = time.perf_counter(), time.process_time()
    summary = generate_triplets(config, templates, lambda: generator, load_model=lambda _name: base_model,
                                rules=DomainRules.of(pm.get_domain("programming")), generator_options=options)
    summary["bench_wall_s"] = time.perf_counter() - started
    summary["bench_cpu_s"] = time.process_time() - cpu
    return summary


def bench_arguments(description: str, queries: int, rounds_help: str) -> argparse.Namespace:
    """The options of both generation benchmarks (this one and bench/generate_options.py)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--queries", type=int, default=queries)
    parser.add_argument("--model", default=None, help="GGUF (default: the get-gguf qwen file)")
    parser.add_argument("--rounds", type=int, default=2 if queries < 48 else 3, help=rounds_help)
    parser.add_argument("--only", nargs="*", help="run only these configurations")
    parser.add_argument("--skip", type=int, default=0, help="leave out the first N prepared queries (other queries)")
    return parser.parse_args()


def triplets_per_query_id(output: Path) -> dict:
    """query id -> triplets written for it in ``output``."""
    counts: dict = {}
    if output.exists():
        for line in output.open(encoding="utf-8"):
            if line.strip():
                query_id = json.loads(line)["query_id"]
                counts[query_id] = counts.get(query_id, 0) + 1
    return counts


def bootstrap_ratio(ours: list, theirs: list, resamples: int = 2000, seed: int = 0) -> tuple:
    """95% interval of sum(ours) / sum(theirs) over queries resampled with replacement (paired)."""
    import numpy as np

    a, b = np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float)
    picks = np.random.default_rng(seed).integers(0, len(a), size=(resamples, len(a)))
    sums_b = b[picks].sum(axis=1)
    ratios = a[picks].sum(axis=1)[sums_b > 0] / sums_b[sums_b > 0]
    return float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))


def main() -> None:
    args = bench_arguments(__doc__.split("\n")[0], queries=48,
                           rounds_help="disjoint chunks of the queries; each runs every configuration")

    from cachetune.core.models import load_sentence_transformer
    from cachetune.plugins.llama_cpp_generator import default_threads, resolve_model

    model = str(resolve_model(args.model))
    base = {"model": model, "temperature": 0.7, "max_tokens": 256}
    cores = default_threads()
    # (name, backend options, ask_together)
    configs = [
        ("instances (old default)", dict(base, parallel=1), True),
        ("batched 2x4 together", dict(base, parallel=4), True),
        ("batched 2x8 together", dict(base, parallel=8, prefill=False), True),
        ("batched 2x8 in turn", dict(base, parallel=8, prefill=False), False),
        ("batched 2x16 in turn", dict(base, parallel=16, prefill=False), False),
        ("batched 2x16 prefill", dict(base, parallel=16, prefill=True), False),
        ("batched (default)", dict(base), False),
        ("batched 1x8", dict(base, concurrency=1, parallel=8), False),
        ("batched 1x16", dict(base, concurrency=1, parallel=16), False),
    ]
    configs = [c for c in configs if not args.only or c[0].split(" (")[0] in args.only or c[0] in args.only]
    base_model = load_sentence_transformer(None, device="cpu")
    totals = {name: {"wall": 0.0, "cpu": 0.0, "done": 0, "rounds": [], "per_query": {}, "requests": 0}
              for name, _, _ in configs}
    with tempfile.TemporaryDirectory() as tmp:
        prepared = prepare_queries(args.skip + args.queries, Path(tmp) / "prepared")
        rows = prepared.read_text(encoding="utf-8").splitlines()[args.skip:]
        chunks = [rows[i::args.rounds] for i in range(args.rounds)]
        print(f"model {Path(model).name}; {len(rows)} CoNaLa queries in {args.rounds} rounds; {os.cpu_count()} CPUs, "
              f"{cores} physical cores; load average {os.getloadavg()[0]:.2f}", flush=True)
        for round_no, chunk in enumerate(chunks, start=1):
            queries = Path(tmp) / f"round-{round_no}.jsonl"
            queries.write_text("\n".join(chunk) + "\n", encoding="utf-8")
            shift = (round_no - 1) % len(configs)
            for name, options, together in configs[shift:] + configs[:shift]:
                output = Path(tmp) / f"out-{round_no}-{name}.jsonl"
                summary = run_generate(options, queries, output, base_model, together)
                done, mine = summary["queries_done"], totals[name]
                mine["wall"] += summary["bench_wall_s"]
                mine["cpu"] += summary["bench_cpu_s"]
                mine["done"] += done
                mine["requests"] += summary["llm_requests"]
                mine["rounds"].append(summary["triplets_per_query"])
                counts = triplets_per_query_id(output)
                mine["per_query"].update({json.loads(row)["id"]: counts.get(json.loads(row)["id"], 0)
                                          for row in chunk})
                print(f"  round {round_no} {name:30s} {done / summary['bench_wall_s']:.3f} queries/s  "
                      f"{done / summary['bench_cpu_s']:.3f} queries/CPU-s  {summary['triplets_per_query']:.2f} "
                      f"triplets/query  ({summary['llm_requests']} requests, "
                      f"{summary['tokens']['completion']} completion tokens, "
                      f"{summary['bench_wall_s']:.0f} s, load {os.getloadavg()[0]:.1f})", flush=True)
    print(f"all {args.rounds} rounds (load average now {os.getloadavg()[0]:.2f}):")
    previous = totals[configs[0][0]] if configs[0][0].startswith("instances") else None
    print(f"ratios against {configs[0][0]}" if previous else "no ratios: the old default was not run")
    report = {}
    for name, mine in totals.items():
        qps, per_cpu = mine["done"] / mine["wall"], mine["done"] / mine["cpu"]
        ids = sorted(mine["per_query"])
        tpq = sum(mine["per_query"].values()) / len(ids)
        line = (f"  {name:30s} {qps:.3f} queries/s  {per_cpu:.3f} queries/CPU-s  {tpq:.2f} triplets/query "
                f"(rounds {' '.join(f'{r:.2f}' for r in mine['rounds'])}), {mine['requests']} requests")
        report[name] = {"queries_per_s": round(qps, 4), "queries_per_cpu_s": round(per_cpu, 4),
                        "requests": mine["requests"],
                        "triplets_per_query": round(tpq, 3), "rounds": [round(r, 3) for r in mine["rounds"]]}
        if previous is not None and mine is not previous:
            theirs = [previous["per_query"][i] for i in ids]
            low, high = bootstrap_ratio([mine["per_query"][i] for i in ids], theirs)
            ratio = tpq / (sum(theirs) / len(ids))
            line += (f"  x{qps / (previous['done'] / previous['wall']):.2f} queries/s, "
                     f"x{per_cpu / (previous['done'] / previous['cpu']):.2f} per CPU-s, triplets/query "
                     f"x{ratio:.2f} [95% {low:.2f}, {high:.2f}]")
        print(line)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
