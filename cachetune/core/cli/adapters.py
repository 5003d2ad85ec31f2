"""``cachetune adapters``: list, show, add, remove, export and verify registered adapters."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cachetune.core.errors import CachetuneError
from cachetune.core.serving.exports import TARGETS as CACHE_TARGETS  # light: no model code


def registry_option(func):
    """``--registry DIR`` (shared with ``embed`` / ``similarity`` and the pipeline commands)."""
    return click.option(
        "--registry", "registry", type=click.Path(file_okay=False, path_type=Path),
        help="Registry folder (default: $CACHETUNE_HOME, else ~/.cache/cachetune).",
    )(func)


def _open(registry):
    from cachetune.registry import AdapterRegistry

    return AdapterRegistry(registry)


def _rows(records) -> list:
    rows = []
    for r in records:
        threshold = r.get("calibrated_threshold")
        plugin = r.get("domain_plugin") or {}
        rows.append({
            "adapter": r["ref"],
            "domain": r["domain"],
            "base model": r["base_model"]["id"],
            "lora": f"r={r['lora'].get('r')} alpha={r['lora'].get('alpha')}",
            "threshold": f"{threshold:.4f}" if isinstance(threshold, (int, float)) else "-",
            "plugin": f"{plugin.get('package', '?')} {plugin.get('version', '')}".strip() if plugin else "-",
            "created": r.get("created") or "",
        })
    return rows


def register(cli, pm) -> None:
    from cachetune.core.cli.domains import format_table

    @cli.group()
    def adapters():
        """Manage the adapter registry (an index plus one folder per adapter version)."""

    @adapters.command("list")
    @click.option("--domain", help="Only this domain's adapters.")
    @click.option("--json", "as_json", is_flag=True, help="Print the full records as JSON.")
    @registry_option
    def list_(domain, as_json, registry):
        """List registered adapters."""
        reg = _open(registry)
        records = reg.list(domain=domain)
        if as_json:
            click.echo(json.dumps(records, indent=2, ensure_ascii=False))
            return
        if not records:
            where = f" for domain '{domain}'" if domain else ""
            click.echo(f"no adapters{where} in {reg.folder}")
            return
        click.echo(format_table(_rows(records),
                                ["adapter", "domain", "base model", "lora", "threshold", "plugin", "created"]))

    @adapters.command()
    @click.argument("ref", metavar="NAME[@VERSION]")
    @registry_option
    def show(ref, registry):
        """Print one adapter's record (latest version unless @VERSION) as JSON."""
        reg = _open(registry)
        record = reg.get(ref)
        record["folder"] = str(reg.path_of(record))
        click.echo(json.dumps(record, indent=2, ensure_ascii=False))

    @adapters.command()
    @click.argument("adapter_dir", metavar="DIR", type=click.Path(path_type=Path))
    @click.option("--name", help="Register under this name (default: the card's domain).")
    @registry_option
    def add(adapter_dir, name, registry):
        """Validate an adapter folder and copy it in as the next version."""
        reg = _open(registry)
        record = reg.add(adapter_dir, name=name)
        click.echo(f"registered {record['ref']} (domain {record['domain']}, base {record['base_model']['id']}) "
                   f"-> {reg.path_of(record)}")

    @adapters.command()
    @click.argument("ref", metavar="NAME[@VERSION]")
    @registry_option
    def remove(ref, registry):
        """Remove one version, or every version of NAME."""
        for record in _open(registry).remove(ref):
            click.echo(f"removed {record['ref']}")

    @adapters.command()
    @click.argument("ref", metavar="NAME[@VERSION]")
    @click.option("--merged", is_flag=True,
                  help="Merge the LoRA into the base weights: a plain SentenceTransformer folder.")
    @click.option("--for", "tool", type=click.Choice(list(CACHE_TARGETS)),
                  help="Merged, in the layout TOOL loads, plus cache-config.* with the adapter's threshold "
                       "in TOOL's units (implies --merged).")
    @click.option("--output", type=click.Path(path_type=Path), required=True, help="New (or empty) folder.")
    @click.option("--device", help="Device for merging (default: sentence-transformers' choice).")
    @registry_option
    def export(ref, merged, tool, output, device, registry):
        """Write an adapter out: its peft files + card, merged into its base model, or ready for a cache."""
        reg = _open(registry)
        record = reg.get(ref)
        if tool:
            from cachetune.core.serving.exports import export_for_cache

            done = export_for_cache(reg, record["ref"], tool, output, device=device)
            click.echo(f"exported {done.ref} for {tool} -> {output}")
            click.echo(f"wrote {done.config_file}:\n")
            click.echo(done.config)
            return
        reg.export(record["ref"], output, merged=merged, device=device)
        what = "merged SentenceTransformer" if merged else "adapter files"
        click.echo(f"exported {record['ref']} ({what}) -> {output}")

    @adapters.command()
    @registry_option
    def verify(registry):
        """Re-hash every registered file; report missing or corrupt ones (exit 1 if any)."""
        reg = _open(registry)
        count = len(reg.list())
        problems = reg.verify()
        for line in problems:
            click.echo(line)
        if problems:
            raise CachetuneError(f"{len(problems)} problem(s) in {count} adapter(s)", reg.folder)
        click.echo(f"ok: {count} adapter(s) intact in {reg.folder}")
