"""``cachetune domains``: the registered domains and the plugins that provide them."""

from __future__ import annotations

import json

import click


def domain_rows(pm) -> list:
    rows = []
    for name, reg in sorted(pm.domains().items()):
        info = pm.domain_plugin(name)
        domain = reg.value
        rows.append({
            "name": name,
            "plugin": reg.plugin,
            "package": info.package,
            "version": info.version,
            "description": domain.description,
            "default_base_model": domain.default_base_model,
            "default_source": str(domain.default_source),
        })
    return rows


def format_table(rows: list, columns: list) -> str:
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) if rows else len(c) for c in columns]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(columns, widths)).rstrip())
    return "\n".join(lines)


def register(cli, pm) -> None:
    @cli.command()
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
    def domains(as_json):
        """List the registered domains."""
        rows = domain_rows(pm)
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        table = [dict(r, package=f"{r['package']} {r['version']}") for r in rows]
        click.echo(format_table(table, ["name", "package", "description"]))
