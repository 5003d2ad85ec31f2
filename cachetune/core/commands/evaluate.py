"""The `cachetune evaluate` command(s)."""


def register(cli, pm) -> None:
    """Add the command(s) to ``cli``."""
