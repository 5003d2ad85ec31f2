"""The ``cachetune`` command line: a click group built by :func:`make_cli`.

Commands are thin: parse options, call a pipeline function, print. Every
:class:`CachetuneError` (and any click usage error) becomes one ``Error: ...`` line and a
non-zero exit; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import sys
from typing import Optional

import click

from cachetune import __version__
from cachetune.core.errors import CachetuneError

# Built-in command modules under cachetune.core.cli; each has ``register(cli)``.
BUILTIN_COMMANDS = ("domains", "plugins", "prepare", "generate", "train", "evaluate", "adapters", "calibrate", "serve",
                    "server", "router", "run")


class DomainChoice(click.ParamType):
    """``--domain``: one of the registered domains (looked up when the option is parsed)."""

    name = "domain"

    def __init__(self, pm):
        self.pm = pm

    def get_metavar(self, param, *args, **kwargs) -> str:
        try:
            return "[" + "|".join(sorted(self.pm.domains())) + "]"
        except CachetuneError:
            return "NAME"

    def convert(self, value, param, ctx):
        domains = self.pm.domains()
        if value not in domains:
            self.fail(f"unknown domain '{value}' (registered: {', '.join(sorted(domains)) or 'none'})", param, ctx)
        return value


def domain_option(pm, required: bool = True):
    return click.option("--domain", "domain", type=DomainChoice(pm), required=required,
                        help="Domain to work on (see `cachetune domains`).")


def make_cli(pm=None) -> click.Group:
    """Build a fresh CLI around plugin manager ``pm`` (a new one when None)."""
    if pm is None:
        from cachetune.core.plugin_manager import get_plugin_manager

        pm = get_plugin_manager()

    @click.group(context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(__version__, "--version", prog_name="cachetune")
    @click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
    @click.pass_context
    def cli(ctx, debug):
        """Train and serve domain-specific LoRA adapters for a semantic cache's embedder."""
        ctx.obj = {"pm": pm, "debug": debug}
        for line in pm.load_errors:
            click.echo(f"Warning: {line}", err=True)
        cli.load_errors_reported = True

    # Conflicting or broken plugins are disabled now, so their warnings print before any command.
    pm.check_registrations()
    for name in BUILTIN_COMMANDS:
        module = importlib.import_module(f"cachetune.core.cli.{name}")
        module.register(cli, pm)
    pm.add_commands(cli)
    cli.pm, cli.load_errors_reported = pm, False
    return cli


def _usage_error_line(exc: click.ClickException, cli) -> str:
    """The error line; a usage error (an unknown command, say) raised before the disabled plugins
    were reported names them, since one of them may be why."""
    message = exc.format_message()
    if isinstance(exc, click.UsageError) and cli is not None and not cli.load_errors_reported and cli.pm.load_errors:
        message += " (" + "; ".join(cli.pm.load_errors) + ")"
    return message


def main(argv: Optional[list] = None, pm=None) -> int:
    """Entry point: run the CLI and turn errors into one line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    cli = None
    try:
        cli = make_cli(pm)
        rc = cli.main(args=argv, prog_name="cachetune", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 130
    except click.ClickException as exc:
        if debug:
            raise
        click.echo(f"Error: {_usage_error_line(exc, cli)}", err=True)
        return exc.exit_code
    except CachetuneError as exc:
        if debug:
            raise
        click.echo(f"Error: {exc}", err=True)
        return 1
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        return 130
    except Exception as exc:  # an unexpected failure still gets one line without --debug
        if debug:
            raise
        click.echo(f"Error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", err=True)
        return 1
    # without standalone mode click hands ctx.exit(n) back as the return value
    return rc if isinstance(rc, int) and not isinstance(rc, bool) else 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
