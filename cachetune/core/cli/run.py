"""``cachetune run``: the whole pipeline for a domain, resumable, with a summary table."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cachetune.core.cli import domain_option
from cachetune.core.cli.train import training_signal_options


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def print_summary(summary: dict) -> None:
    from cachetune.core.cli.domains import format_table
    from cachetune.core.pipeline.run import summary_rows

    rows = [{"set": s, "metric": m, "base": _fmt(b), "adapter": _fmt(a)} for s, m, b, a in summary_rows(summary)]
    if rows:
        click.echo(format_table(rows, ["set", "metric", "base", "adapter"]))
    timings = ", ".join(f"{stage} {secs:.0f}s{' (skipped)' if summary['skipped'].get(stage) else ''}"
                        for stage, secs in summary["timings_s"].items())
    click.echo(f"wall time: {timings}")
    if summary.get("adapter_bytes"):
        click.echo(f"adapter: {summary['workdir']}/adapter ({summary['adapter_bytes'] / 1024:.0f} KiB)")
    reg = summary["stages"].get("register", {}).get("summary")
    if reg:
        click.echo(f"registered as {reg['ref']} in {reg['registry']}")


def register(cli, pm) -> None:
    @cli.command()
    @domain_option(pm)
    @click.option("--config", "config_file", type=click.Path(path_type=Path), help="YAML file with stage options.")
    @click.option("--workdir", type=click.Path(path_type=Path), help="Work folder (default runs/<domain>).")
    @click.option("--source", help="prepare.source: queries to train on (default: the domain's sample).")
    @click.option("--limit", type=int, help="prepare.limit: keep at most N queries.")
    @click.option("--backend", help="generate.backend (default llama-cpp).")
    @click.option("--model", help="generate.model: the generator model (default: Qwen2.5-Coder-0.5B GGUF).")
    @click.option("-o", "--option", "backend_option", type=(str, str), multiple=True, metavar="NAME VALUE",
                  help="generate.options: an option the backend declares (see `cachetune plugins`); repeatable.")
    @click.option("--base-model", help="run.base_model: the embedding model (default: the domain's).")
    @training_signal_options
    @click.option("--registry", help="register.registry: registry folder (default $CACHETUNE_HOME).")
    @click.option("--no-register", is_flag=True, help="Do not register the adapter.")
    @click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE",
                  help="Override any config key, e.g. --set train.lr=1e-4 (repeatable).")
    @click.option("--stop-after", type=click.Choice(["prepare", "generate", "train", "evaluate", "register"]),
                  help="Stop after this stage.")
    @click.option("--print-config", is_flag=True, help="Print the resolved config as YAML and exit.")
    @click.option("--json", "as_json", is_flag=True, help="Print the final summary as JSON.")
    def run(domain, config_file, workdir, source, limit, backend, model, backend_option, base_model, training_sets,
            training_sources, pairs, registry, no_register, sets, stop_after, print_config, as_json):
        """Run prepare -> generate -> train -> evaluate -> register; completed stages are skipped."""
        from cachetune.core.pipeline.run import Pipeline
        from cachetune.core.pipeline.config import dump_config, resolve_config

        overrides = {
            "run": {"workdir": str(workdir) if workdir else None, "base_model": base_model},
            "prepare": {"source": source, "limit": limit},
            "generate": {"backend": backend, "model": model, "options": dict(backend_option)},
            "train": {"training_sets": training_sets, "training_sources": training_sources,
                      "pairs": [str(p) for p in pairs] or None},
            "register": {"registry": registry},
        }
        config = resolve_config(pm.get_domain(domain), config_file, overrides, sets)
        if no_register:
            config["register"]["enabled"] = False
        if print_config:
            click.echo(dump_config(config), nl=False)
            return
        pipeline = Pipeline(pm, config, log=lambda message: click.echo(message, err=True))
        summary = pipeline.run(stop_after=stop_after)
        if as_json:
            click.echo(json.dumps(summary, indent=2, default=str))
        else:
            print_summary(summary)
