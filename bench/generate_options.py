"""Benchmark: queries/s of the llama-cpp backend, batched/concurrent vs one request at a time.

llama-cpp-python has no batched generation across prompts (and its server has one model lock,
no parallel slots), so "batching" here can only mean what this measures in one run, on the
same real CoNaLa queries, the same GGUF and the same seeds:

  one-at-a-time     one request per generate() call, one Llama, default threads (the baseline)
  batched           the whole batch in one generate() call, one Llama (what --batch-size does)
  2 instances       two Llama instances in two threads, 1 thread each (-o concurrency 2)
  1x2 threads       one Llama with 2 threads (-o n_threads 2)
  no prefix reuse   the KV cache reset before every request (what the shared few-shot prefix saves)
  no grammar        replies not constrained by the JSON-schema grammar (-o json_schema false)

Ratios are against the baseline. Other jobs on the machine change absolute numbers a lot (and
hurt configurations with more threads than free cores most), so the configurations run in
interleaved rounds and each keeps its best round; the load average is printed.

    .venv/bin/python bench/generate.py [--queries 6] [--rounds 2] [--model PATH.gguf] [--only NAME ...]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
CONALA = REPO.parent / "shared" / "data" / "conala" / "conala-train.json"

from generate import bench_arguments  # noqa: E402  (bench/generate.py)


def load_queries(n: int):
    from cachetune.core.plugin_manager import get_plugin_manager
    from cachetune.core.data.prepare import prepare

    pm = get_plugin_manager(load_entrypoints=False)
    with tempfile.TemporaryDirectory() as tmp:
        prepare(pm.get_domain("programming"), Path(tmp), source=str(CONALA), limit=max(n * 2, 20), holdout=0.0)
        rows = [json.loads(line) for line in (Path(tmp) / "train.jsonl").read_text().splitlines()]
    return rows[:n], pm.prompt_templates("programming")


def build_requests(rows, templates):
    from cachetune.core.generate.pipeline import request_seed
    from cachetune.core.generate.prompting import NEGATIVES, PARAPHRASES, Request, build_conversation

    return [Request(build_conversation(templates, kind, row["query"], n), request_seed(0, row["id"], kind), kind, n)
            for row in rows for kind, n in ((PARAPHRASES, 3), (NEGATIVES, 2))]


def measure(name, options, requests, n_queries, one_at_a_time=False, reset_each=False):
    from cachetune.plugins.llama_cpp_generator import LlamaCppGenerator

    gen = LlamaCppGenerator(options)
    gen.generate(requests[:1] * gen.workers)  # load and evaluate the shared prefix once, untimed
    started = time.perf_counter()
    if one_at_a_time or reset_each:
        results = []
        for request in requests:
            if reset_each:
                gen._llamas[0].reset()  # forget the KV cache: the next prompt is evaluated in full
            results.extend(gen.generate([request]))
    else:
        results = gen.generate(requests)
    wall = time.perf_counter() - started
    gen.close()
    prompt = sum(r.prompt_tokens for r in results)
    completion = sum(r.completion_tokens for r in results)
    return {"name": name, "wall_s": wall, "queries_per_s": n_queries / wall, "completion_tokens": completion,
            "prompt_tokens": prompt, "tokens_per_s": completion / wall}


def main() -> None:
    args = bench_arguments(__doc__.split("\n")[0], queries=6, rounds_help="interleaved rounds; each keeps its best")

    from cachetune.plugins.llama_cpp_generator import default_threads, resolve_model

    model = str(resolve_model(args.model))
    rows, templates = load_queries(args.queries)
    requests = build_requests(rows, templates)
    base = {"model": model, "temperature": 0.7, "max_tokens": 256}
    configs = [
        ("one-at-a-time", dict(base, concurrency=1, n_threads=1), dict(one_at_a_time=True)),
        ("batched", dict(base, concurrency=1, n_threads=1), {}),
        ("2 instances", dict(base, concurrency=2, n_threads=2), {}),
        ("1x2 threads", dict(base, concurrency=1, n_threads=2), {}),
        ("no prefix reuse", dict(base, concurrency=1, n_threads=1), dict(reset_each=True)),
        ("no grammar", dict(base, concurrency=1, n_threads=1, json_schema=False), {}),
    ]
    print(f"model {Path(model).name}; {args.queries} CoNaLa queries ({len(requests)} requests); "
          f"{os.cpu_count()} CPUs; default n_threads {default_threads()} (one instance per core); "
          f"load average {os.getloadavg()[0]:.2f}")
    configs = [c for c in configs if not args.only or c[0] in args.only]
    best = {}
    for round_no in range(1, args.rounds + 1):
        for name, options, how in configs:
            result = measure(name, options, requests, args.queries, **how)
            print(f"  round {round_no} {name:16s} {result['queries_per_s']:.3f} queries/s  "
                  f"{result['tokens_per_s']:5.1f} completion tok/s  ({result['completion_tokens']} completion, "
                  f"{result['prompt_tokens']} prompt tokens, {result['wall_s']:.1f} s)", flush=True)
            if name not in best or result["queries_per_s"] > best[name]["queries_per_s"]:
                best[name] = result
    results = [best[name] for name, _, _ in configs]
    baseline = next((r for r in results if r["name"] == "one-at-a-time"), None)
    if baseline:
        print(f"ratios vs one-at-a-time, best of {args.rounds} rounds (load average now {os.getloadavg()[0]:.2f}):")
        for result in results[1:]:
            print(f"  {result['name']:16s} x{result['queries_per_s'] / baseline['queries_per_s']:.2f}")


if __name__ == "__main__":
    main()
