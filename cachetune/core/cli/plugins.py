"""``cachetune plugins``: installed plugins, the hooks each implements, and each backend's options."""

from __future__ import annotations

import json

import click


def plugin_rows(pm) -> list:
    from cachetune.core.generate.backends import describe_options

    backends = pm.generators()
    rows = []
    for name, info in sorted(pm.plugin_info.items()):
        if pm.get_plugin(name) is None:
            continue
        rows.append({"name": name, "package": info.package, "version": info.version,
                     "builtin": info.builtin, "hooks": pm.hooks_of(name),
                     "backends": [{"name": reg.name, "options": describe_options(reg.value)}
                                  for reg in backends.values() if reg.plugin == name]})
    return rows


def option_line(option: dict) -> str:
    default = "" if option["default"] is None else f" (default {json.dumps(option['default'])})"
    return f"    -o {option['name']} {option['type'].upper()}{default}: {option['help']}".rstrip(": ")


def register(cli, pm) -> None:
    @cli.command()
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
    def plugins(as_json):
        """List installed plugins, the hooks each implements and each backend's options (-o NAME VALUE)."""
        rows = plugin_rows(pm)
        if as_json:
            click.echo(json.dumps({"plugins": rows, "errors": pm.load_errors}, indent=2))
            return
        for row in rows:
            kind = "built-in" if row["builtin"] else "external"
            click.echo(f"{row['name']} ({row['package']} {row['version']}, {kind}): {', '.join(row['hooks'])}")
            for backend in row["backends"]:
                click.echo(f"  backend {backend['name']}" + (" options:" if backend["options"] else ": no options"))
                for option in backend["options"]:
                    click.echo(option_line(option))
