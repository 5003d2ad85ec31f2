"""``cachetune plugins``: installed plugins and the hooks each implements."""

from __future__ import annotations

import json

import click


def plugin_rows(pm) -> list:
    rows = []
    for name, info in sorted(pm.plugin_info.items()):
        if pm.get_plugin(name) is None:
            continue
        rows.append({"name": name, "package": info.package, "version": info.version,
                     "builtin": info.builtin, "hooks": pm.hooks_of(name)})
    return rows


def register(cli, pm) -> None:
    @cli.command()
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
    def plugins(as_json):
        """List installed plugins and the hooks each implements."""
        rows = plugin_rows(pm)
        if as_json:
            click.echo(json.dumps({"plugins": rows, "errors": pm.load_errors}, indent=2))
            return
        for row in rows:
            kind = "built-in" if row["builtin"] else "external"
            click.echo(f"{row['name']} ({row['package']} {row['version']}, {kind}): {', '.join(row['hooks'])}")
