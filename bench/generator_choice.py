"""Choose the default generator by the quality of the adapter its triplets train.

Generates triplets for the same first N training queries of a `cachetune run` work folder with
each candidate GGUF (llama.cpp, CPU), trains one adapter per candidate with `cachetune run`'s
training defaults, and evaluates each on the work folder's held-out triplets and the domain's
human pair set (restricted to held-out questions). Triplets a candidate already wrote for those
queries (e.g. by the run itself) are reused, so rerunning only trains and evaluates.

    python bench/generator_choice.py --workdir runs/programming --domain programming --queries 150 \
        --model qwen=$(../shared/tools/get-gguf qwen) --model smollm=$(../shared/tools/get-gguf smollm)

The held-out triplets come from the run's own generator, which favours it; the human pairs
(CoNaLa rewritten intents, RQE) do not.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import evaluate_on, fmt, rows_of, train_adapter  # noqa: E402


def first_ids(train_queries: Path, n: int) -> list:
    ids = []
    with open(train_queries, encoding="utf-8") as fh:
        for line in fh:
            ids.append(json.loads(line)["id"])
            if len(ids) == n:
                break
    return ids


def generate(domain: str, train_queries: Path, model: str, n: int, output: Path) -> dict:
    """`cachetune generate` for the first n queries (resumes what is already there)."""
    started = time.time()
    subprocess.run([sys.executable, "-m", "cachetune.core.cli", "generate", "--domain", domain,
                    "--input", str(train_queries), "--output", str(output), "--model", model,
                    "--limit", str(n)], check=True)
    stats = json.loads(Path(str(output) + ".stats.json").read_text(encoding="utf-8"))
    return {"wall_s": time.time() - started, "stats": stats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="a `cachetune run` folder (data/, triplets/)")
    parser.add_argument("--domain", required=True)
    parser.add_argument("--queries", type=int, default=150, help="first N training queries")
    parser.add_argument("--model", action="append", required=True, help="NAME=PATH.gguf (repeat per candidate)")
    parser.add_argument("--reuse", action="append", default=[],
                        help="NAME=TRIPLETS.jsonl: take that candidate's triplets for the N queries from this file")
    parser.add_argument("--output", type=Path, default=Path("runs/generator-choice"))
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-inverted", action="store_true",
                        help="train on the triplets the base model ranks backwards too")
    args = parser.parse_args()

    from cachetune.core.plugin_manager import get_plugin_manager

    pm = get_plugin_manager()
    args.output.mkdir(parents=True, exist_ok=True)
    train_queries = args.workdir / "data" / "train.jsonl"
    wanted = set(first_ids(train_queries, args.queries))
    reuse = dict(r.split("=", 1) for r in args.reuse)
    summary, rows = {}, []
    for name, model in (m.split("=", 1) for m in args.model):
        triplets = args.output / f"{args.domain}-{name}.jsonl"
        if name in reuse:  # keep only the N queries' triplets of an existing file
            kept = [line for line in Path(reuse[name]).read_text(encoding="utf-8").splitlines()
                    if json.loads(line)["query_id"] in wanted]
            triplets.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
            info = {"wall_s": None, "stats": {}}
        else:
            info = generate(args.domain, train_queries, model, args.queries, triplets)
        count = sum(1 for _ in open(triplets, encoding="utf-8"))
        if count == 0:
            print(f"{name}: no triplets from {args.queries} queries; nothing to train")
            summary[name] = {"triplets": 0}
            continue
        adapter = args.output / f"adapter-{args.domain}-{name}"
        started = time.time()
        train_adapter(args.domain, [triplets], adapter, args)
        train_s = time.time() - started
        result = evaluate_on(pm, args.domain, args.workdir, adapter, args.output / f"eval-{args.domain}-{name}")
        for row in rows_of(result, name, args.domain):
            rows.append(row)
        stats = info["stats"]
        summary[name] = {"triplets": count, "queries_per_s": stats.get("queries_per_s"),
                         "generate_wall_s": info["wall_s"], "train_s": round(train_s, 1)}
        print(f"{name}: {count} triplets from {args.queries} queries"
              + (f", {stats['queries_per_s']:.3f} queries/s" if stats.get("queries_per_s") else "")
              + f"; trained in {train_s:.0f} s", flush=True)
    (args.output / f"{args.domain}-choice.json").write_text(json.dumps({"summary": summary, "rows": rows},
                                                                       indent=2), encoding="utf-8")
    print(f"| generator | triplets from {args.queries} queries | set | margin base → adapter | "
          "triplet acc | AP base → adapter | hit rate @P0.95 |")
    print("|---|---|---|---|---|---|---|")
    by_key = {}
    for r in rows:
        by_key.setdefault((r["adapter"], r["set"]), {})[r["model"]] = r
    for (name, set_name), pair in by_key.items():
        b, a = pair.get("base", {}), pair.get("adapter", {})
        print(f"| {name} | {summary[name]['triplets']} | {set_name} | {fmt(b.get('margin'))} → {fmt(a.get('margin'))} "
              f"| {fmt(b.get('accuracy'))} → {fmt(a.get('accuracy'))} | {fmt(b.get('ap'))} → {fmt(a.get('ap'))} "
              f"| {fmt(b.get('hit_rate'))} → {fmt(a.get('hit_rate'))} |")


if __name__ == "__main__":
    main()
