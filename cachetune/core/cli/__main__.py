"""``python -m cachetune.core.cli``: the CLI as a module (what torchrun starts on each rank)."""

from cachetune.core.cli import entry

entry()
