"""The adapter registry: an index file plus one folder per adapter version.

``AdapterRegistry(root)`` adds, lists, resolves, verifies, removes and exports adapters;
``register_trained_adapter`` is what ``train --register`` calls. Nothing here imports
torch until a merged export is asked for.
"""

from cachetune.registry.registry import (
    AdapterRegistry,
    HOME_ENV,
    calibrated_threshold,
    default_home,
    parse_ref,
    register_trained_adapter,
    resolve_adapter,
)

__all__ = [
    "AdapterRegistry",
    "HOME_ENV",
    "calibrated_threshold",
    "default_home",
    "parse_ref",
    "register_trained_adapter",
    "resolve_adapter",
]
