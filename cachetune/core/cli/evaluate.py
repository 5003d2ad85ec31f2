"""``cachetune evaluate``: the base model, and an adapter beside it, on labelled pairs and triplets."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from cachetune.core.cli import domain_option


def _line(name: str, width: int, kind: str, model: str, metrics: dict) -> str:
    t, p = metrics.get("triplets"), metrics.get("pairs")
    cells = [f"{name:<{width}}", f"{kind:<8}", f"{model:<7}"]
    cells.append(f"{t['margin']:>7.4f} {t['accuracy']:>6.3f}" if t else f"{'-':>7} {'-':>6}")
    if p:
        thr = "   none" if p["calibrated_threshold"] is None else f"{p['calibrated_threshold']:>7.3f}"
        cells.append(f"{p['ap']:>6.4f} {p['auc']:>6.4f} {p['best_f1']:>6.4f} {thr} {p['hit_rate']:>6.3f} "
                     f"{p['false_hit_rate']:>6.3f}")
    return " ".join(cells)


def print_summary(result: dict, output: Path) -> None:
    width = max([3, *map(len, result["sets"])])
    header = (f"{'set':<{width}} {'kind':<8} {'model':<7} {'margin':>7} {'acc':>6} {'AP':>6} {'AUC':>6} {'F1':>6} "
              f"{'thr@P' + format(result['target_precision'], 'g'):>7} {'hit':>6} {'false':>6}")
    click.echo(header)
    for name, entry in result["sets"].items():
        for model in ("base", "adapter"):
            if model in entry:
                click.echo(_line(name, width, entry["kind"], model, entry[model]))
    if "improvement" in result:
        rel = result["improvement"]
        parts = [f"{kind} {metric} {value * 100:+.1f}%" for kind in ("triplets", "pairs") if kind in rel
                 for metric, value in rel[kind].items() if metric in ("margin", "ap", "hit_rate") and value is not None]
        if parts:
            click.echo("improvement (primary sets): " + ", ".join(parts))
    timing = result["timing"]
    click.echo(f"{timing['texts']} distinct texts, {timing['total_s']:.1f} s -> {output}/metrics.json, "
               f"{output}/report.md")


def register(cli, pm) -> None:
    @cli.command()
    @domain_option(pm)
    @click.option("--adapter", metavar="NAME|DIR", help="Adapter to evaluate beside the base model: a folder, "
                                                          "or a name in the adapter registry.")
    @click.option("--registry", type=click.Path(path_type=Path), help="Adapter registry folder "
                                                                      "(default: $CACHETUNE_HOME).")
    @click.option("--base-model", metavar="ID|PATH", help="Base model (default: the adapter's, else the "
                                                          "domain's). Must match the adapter's base.")
    @click.option("--pairs", "pairs", multiple=True, type=click.Path(path_type=Path),
                  help="Labelled pairs, JSONL or CSV with a header: sentence1,sentence2,label (1 = same "
                       "question). Repeatable.")
    @click.option("--columns", metavar="A,B,LABEL", help="Names of the sentence1,sentence2,label columns in "
                                                          "--pairs files.")
    @click.option("--triplets", "triplets", multiple=True, type=click.Path(path_type=Path),
                  help="Triplets JSONL with anchor, positive, negative (generation format). Repeatable.")
    @click.option("--holdout", type=click.Path(path_type=Path),
                  help="A prepared folder: evaluates its holdout_triplets.jsonl and keeps the domain sets "
                       "to held-out queries (no training query is scored).")
    @click.option("--domain-sets/--no-domain-sets", default=True, show_default=True,
                  help="Also run the domain's own evaluation sets.")
    @click.option("--eval-data", metavar="PATH",
                  help="Data for the domain's own evaluation sets instead of the pairs its package ships "
                       "(a pairs file, or the domain's format: CoNaLa curated JSON, RQE XML).")
    @click.option("--limit", type=int, help="At most N rows per domain evaluation set (seeded sample).")
    @click.option("--seed", type=int, default=0, show_default=True, help="Seed for sampling and the bootstrap.")
    @click.option("--target-precision", type=float, default=0.95, show_default=True,
                  help="Precision the calibrated threshold must reach.")
    @click.option("--bootstrap", "n_bootstrap", type=int, default=1000, show_default=True,
                  help="Bootstrap resamples for the 95% intervals (0: none).")
    @click.option("--batch-size", type=int, default=64, show_default=True, help="Encoding batch size.")
    @click.option("--max-seq-length", type=int, help="Word pieces read per text (default: the model's).")
    @click.option("--device", help="Torch device (default: auto).")
    @click.option("--plots/--no-plots", default=True, show_default=True, help="Write the PNG plots.")
    @click.option("--output", type=click.Path(path_type=Path), required=True, help="Output folder.")
    @click.option("--json", "as_json", is_flag=True, help="Print metrics.json to stdout.")
    @click.option("--register-metrics", is_flag=True,
                  help="Store the metrics and calibrated threshold in the registry record of --adapter NAME.")
    def evaluate(domain, adapter, registry, base_model, pairs, columns, triplets, holdout, domain_sets, eval_data,
                 limit, seed, target_precision, n_bootstrap, batch_size, max_seq_length, device, plots,
                 output, as_json, register_metrics):
        """Margin, AP, calibrated threshold and false hits: base model vs adapter."""
        from cachetune.core.errors import CachetuneError
        from cachetune.core.evaluate.inputs import parse_columns
        from cachetune.core.evaluate.runner import evaluate as run_evaluate
        from cachetune.core.evaluate.runner import registry_summary
        from cachetune.registry import AdapterRegistry, resolve_adapter

        if register_metrics:
            if not adapter:
                raise CachetuneError("--register-metrics needs --adapter NAME (a registry name)")
            if Path(adapter).expanduser().exists():
                raise CachetuneError("--register-metrics needs --adapter NAME, a registry name, not a folder "
                                     "(add the folder with `cachetune adapters add` first)", adapter)
        cols = parse_columns(columns) if columns else None
        adapter_dir, name = resolve_adapter(adapter, registry)
        log = lambda message: click.echo(message, err=True)  # noqa: E731 - stdout is for results
        result = run_evaluate(
            pm.get_domain(domain), output, pairs=pairs, triplets=triplets, holdout=holdout, columns=cols,
            evaluation_sets=pm.evaluation_sets(domain) if domain_sets else (), eval_data=eval_data,
            limit=limit, seed=seed, base_model=base_model, adapter=adapter_dir, adapter_name=name,
            target_precision=target_precision, n_bootstrap=n_bootstrap, batch_size=batch_size,
            max_seq_length=max_seq_length, device=device, plots=plots, show_progress=sys.stderr.isatty(), log=log,
        )
        if register_metrics:
            AdapterRegistry(registry).update_metrics(name, registry_summary(result, output))
            log(f"metrics and calibrated threshold stored in the registry record of '{name}'")
        if as_json:
            click.echo(json.dumps(result, indent=2, ensure_ascii=False))
        else:
            print_summary(result, output)
