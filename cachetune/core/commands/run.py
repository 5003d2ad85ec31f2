"""The `cachetune run` command(s)."""


def register(cli, pm) -> None:
    """Add the command(s) to ``cli``."""
