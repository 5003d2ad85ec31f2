"""Reproduce the README's results table: base vs adapter on held-out data, per domain and across domains.

Expects one `cachetune run ... --stop-after generate` work folder per domain (data/ and triplets/), e.g.

    cachetune run --domain programming --workdir runs/programming \
        --source ../shared/data/conala/conala-train.json --stop-after generate
    cachetune run --domain medical --workdir runs/medical --source ../shared/data/medquad --limit 3000 \
        --stop-after generate
    python bench/quality.py --workdir programming=runs/programming --workdir medical=runs/medical

Trains one adapter per domain and one multi-domain adapter on both triplet files (with `cachetune run`'s
training defaults unless --epochs/--batch-size/--lr say otherwise), then evaluates every adapter on every
domain's held-out triplets and the domain's human pair set (CoNaLa pairs restricted to held-out
questions; RQE test), and prints margin, triplet accuracy, AP and the calibrated hit rate.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def train_adapter(domain: str, triplet_files, output: Path, args) -> dict:
    from cachetune.core.train.config import TrainConfig
    from cachetune.core.train.loop import train

    data = output.parent / f"{output.name}-train.jsonl"
    with open(data, "w", encoding="utf-8") as out:
        for path in triplet_files:
            for line in Path(path).read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                row["domain"] = domain  # the trainer keeps only rows of the adapter's domain
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
    from cachetune.core.pipeline.config import DEFAULTS
    from cachetune.core.train.config import DEFAULT_LR

    config = TrainConfig(domain=domain, train_data=data, output=output,
                         epochs=args.epochs or DEFAULTS["train"]["epochs"],
                         batch_size=args.batch_size or DEFAULTS["train"]["batch_size"],
                         lr=args.lr or DEFAULT_LR, overwrite=True, seed=args.seed,
                         drop_inverted=not args.keep_inverted)
    started = time.time()
    card = train(config, domain_plugin={"name": domain, "package": "cachetune", "version": "bench"},
                 log=lambda m: None, show_progress=False)
    dropped = card["data"]["skipped_by_reason"].get("inverted", 0)
    print(f"trained {output.name}: {card['data']['triplets']} triplets ({dropped} inverted ones dropped) "
          f"in {time.time() - started:.0f} s", flush=True)
    return card


def evaluate_on(pm, domain: str, workdir: Path, adapter: Path, output: Path) -> dict:
    from cachetune.core.evaluate.runner import evaluate

    return evaluate(pm.get_domain(domain), output, triplets=[workdir / "triplets" / "holdout.jsonl"],
                    holdout=workdir / "data", evaluation_sets=pm.evaluation_sets(domain),
                    adapter=str(adapter), plots=False, n_bootstrap=200)


def rows_of(result: dict, trained_on: str, evaluated_on: str) -> list:
    rows = []
    for name, entry in result["sets"].items():
        for model in ("base", "adapter"):
            metrics = entry.get(model, {})
            t, p = metrics.get("triplets") or {}, metrics.get("pairs") or {}
            rows.append({"adapter": trained_on, "eval": evaluated_on, "set": name, "model": model,
                         "margin": t.get("margin"), "accuracy": t.get("accuracy"), "ap": p.get("ap"),
                         "hit_rate": p.get("hit_rate"), "threshold": p.get("calibrated_threshold")})
    return rows


def fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", action="append", required=True, help="DOMAIN=FOLDER (repeat per domain)")
    parser.add_argument("--output", type=Path, default=Path("runs/quality"))
    parser.add_argument("--epochs", type=int, default=None, help="default: cachetune run's (1)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: cachetune run's (64)")
    parser.add_argument("--lr", type=float, default=None, help="default: the trainer's measured default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-inverted", action="store_true",
                        help="train on the triplets the base model ranks backwards too")
    parser.add_argument("--no-multi", action="store_true", help="skip the multi-domain adapter")
    args = parser.parse_args()

    from cachetune.core.plugin_manager import get_plugin_manager

    pm = get_plugin_manager()
    workdirs = {d: Path(f) for d, f in (w.split("=", 1) for w in args.workdir)}
    args.output.mkdir(parents=True, exist_ok=True)
    adapters = {}
    for domain, folder in workdirs.items():
        train_adapter(domain, [folder / "triplets" / "train.jsonl"], args.output / f"adapter-{domain}", args)
        adapters[domain] = args.output / f"adapter-{domain}"
    if not args.no_multi and len(workdirs) > 1:
        files = [f / "triplets" / "train.jsonl" for f in workdirs.values()]
        train_adapter(next(iter(workdirs)), files, args.output / "adapter-multi", args)
        adapters["multi"] = args.output / "adapter-multi"

    rows = []
    for trained_on, adapter in adapters.items():
        for domain, folder in workdirs.items():
            result = evaluate_on(pm, domain, folder, adapter, args.output / f"eval-{trained_on}-on-{domain}")
            rows += rows_of(result, trained_on, domain)
    (args.output / "quality.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")

    print("| adapter | evaluated on | set | model | margin | triplet acc | AP | hit rate @P0.95 |")
    print("|---|---|---|---|---|---|---|---|")
    seen = set()
    for r in rows:
        if r["model"] == "base":
            key = (r["eval"], r["set"])
            if key in seen:
                continue  # the base row is the same whichever adapter was evaluated beside it
            seen.add(key)
            label = "—"
        else:
            label = r["adapter"]
        print(f"| {label} | {r['eval']} | {r['set']} | {r['model']} | {fmt(r['margin'])} | {fmt(r['accuracy'])} "
              f"| {fmt(r['ap'])} | {fmt(r['hit_rate'])} |")
    # The cross-domain check: an adapter must not lose more than 1% AP on the other domain's sets.
    base_ap = {(r["eval"], r["set"]): r["ap"] for r in rows if r["model"] == "base" and r["ap"] is not None}
    for r in rows:
        if r["model"] == "adapter" and r["ap"] is not None:
            change = (r["ap"] - base_ap[(r["eval"], r["set"])]) / base_ap[(r["eval"], r["set"])]
            print(f"AP change: adapter {r['adapter']} on {r['eval']}/{r['set']}: {change * 100:+.2f}%")


if __name__ == "__main__":
    main()
