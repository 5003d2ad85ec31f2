"""The `cachetune train` command(s)."""


def register(cli, pm) -> None:
    """Add the command(s) to ``cli``."""
