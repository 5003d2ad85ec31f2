"""``cachetune adapters``: list, show, add, remove, export (peft, merged, ONNX), average and verify adapters."""

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
    @click.option("--format", "fmt", type=click.Choice(["peft", "merged", "onnx"]), default="peft", show_default=True,
                  help="peft: the adapter files + card; merged: the LoRA merged into the base weights (a plain "
                       "SentenceTransformer folder); onnx: merged, as ONNX for onnxruntime (cached in the registry).")
    @click.option("--merged", is_flag=True, help="Same as --format merged.")
    @click.option("--quantize", type=click.Choice(["int8"]), help="With --format onnx: int8 weights (faster).")
    @click.option("--for", "tool", type=click.Choice(list(CACHE_TARGETS)),
                  help="Merged, in the layout TOOL loads, plus cache-config.* with the adapter's threshold "
                       "in TOOL's units (implies --merged).")
    @click.option("--output", type=click.Path(path_type=Path),
                  help="New (or empty) folder. Optional with --format onnx: the export is cached in the registry "
                       "and loaded from there by `serve --backend onnx`.")
    @click.option("--rebuild", is_flag=True, help="With --format onnx: replace a cached export that fails its check.")
    @click.option("--device", help="Device for merging (default: sentence-transformers' choice).")
    @registry_option
    def export(ref, fmt, merged, quantize, tool, output, rebuild, device, registry):
        """Write an adapter out: its peft files + card, merged into its base model, as ONNX, or ready for a cache."""
        fmt = "merged" if merged and fmt == "peft" else fmt
        if merged and fmt != "merged":
            raise click.UsageError(f"--merged contradicts --format {fmt}")
        if tool and fmt == "onnx":
            raise click.UsageError("--for writes a merged SentenceTransformer folder, not --format onnx")
        if quantize and fmt != "onnx":
            raise click.UsageError("--quantize needs --format onnx")
        if rebuild and fmt != "onnx":
            raise click.UsageError("--rebuild needs --format onnx")
        if output is None and fmt != "onnx":
            raise click.UsageError("--output is required (except with --format onnx)")
        reg = _open(registry)
        record = reg.get(ref)
        if tool:
            from cachetune.core.serving.exports import export_for_cache

            done = export_for_cache(reg, record["ref"], tool, output, device=device)
            click.echo(f"exported {done.ref} for {tool} -> {output}")
            click.echo(f"wrote {done.config_file}:\n")
            click.echo(done.config)
            return
        write = None
        if fmt == "onnx":
            from cachetune.core.serving.onnx import adapter_export, copy_export

            cached = adapter_export(reg, record, quantize, device=device, rebuild=rebuild)
            click.echo(f"{record['ref']} as ONNX ({quantize or 'fp32'}) cached at {cached}")
            if output is None:
                return
            write = copy_export(reg, quantize, device)
        reg.export(record["ref"], output, merged=fmt == "merged", device=device, write=write)
        what = {"peft": "adapter files", "merged": "merged SentenceTransformer",
                "onnx": f"ONNX {quantize or 'fp32'}"}[fmt]
        click.echo(f"exported {record['ref']} ({what}) -> {output}")

    @adapters.command()
    @click.argument("refs", metavar="NAME[@VERSION]|DIR...", nargs=-1, required=True)
    @click.option("--output", type=click.Path(path_type=Path), required=True, help="New (or empty) folder.")
    @click.option("--rank", type=int,
                  help="Truncate the mean update to this LoRA rank (SVD per layer): the size of one rank-R "
                       "adapter. Default: exact, at the adapters' ranks summed.")
    @click.option("--device", help="Device for the averaging (default: sentence-transformers' choice).")
    @registry_option
    def average(refs, output, rank, device, registry):
        """Average adapters of one domain and base model (e.g. one recipe at several training seeds)
        into one adapter: the mean of their LoRA updates."""
        from cachetune.core import outputs
        from cachetune.core.adapters import average_adapters
        from cachetune.registry import resolve_adapter

        if len(refs) < 2:
            raise click.UsageError("give at least two adapters")
        out = outputs.check_output(output, "--output", folder=True)
        if out.exists() and any(out.iterdir()):
            raise CachetuneError("exists and is not empty (--output)", out)
        folders = [resolve_adapter(ref, registry)[0] for ref in refs]
        card = average_adapters(folders, out, rank=rank, device=device)
        click.echo(f"averaged {len(folders)} adapters -> {out} (LoRA r={card['lora']['r']}, "
                   f"{card['averaged']['combination']})")

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
