"""Checking where a command will write, before it does any work.

Every command that writes checks its output first, so that a mistake costs a second, not a
training run: the output must not lie inside an adapter registry (only the registry writes
there; a registered adapter replaced by hand would no longer match its recorded hashes), must
not replace existing results unless ``--overwrite`` says so, and its folder must be writable.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable, Optional, Union

from cachetune.core.errors import CachetuneError

PathLike = Union[str, Path]
# The registry's layout (cachetune.registry uses these names): ROOT/adapters/index.json.
REGISTRY_ADAPTERS_DIR = "adapters"
REGISTRY_INDEX_FILE = "index.json"


def registry_containing(path: PathLike) -> Optional[Path]:
    """The ``adapters`` folder of the registry that ``path`` lies in (or is), else None.

    A registry is recognised by its index: ``.../adapters/index.json``. Links are resolved
    first, so a link into a registry counts as inside it.
    """
    real = Path(os.path.realpath(Path(path).expanduser()))
    for folder in (real, *real.parents):
        if folder.name == REGISTRY_ADAPTERS_DIR and (folder / REGISTRY_INDEX_FILE).is_file():
            return folder
    return None


def _nearest_existing(path: Path) -> Path:
    for folder in (path, *path.parents):
        if os.path.lexists(folder):
            return folder
    return Path(".")


def check_writable(path: PathLike, option: str) -> None:
    """``path`` (file or folder, existing or not) can be created: the nearest existing folder on
    its way accepts a new file. Probed with a temporary file, removed at once."""
    path = Path(path).expanduser()
    existing = _nearest_existing(path)
    if existing != path and not existing.is_dir():
        raise CachetuneError(f"cannot write here: {existing} is not a folder ({option})", path)
    folder = existing if existing.is_dir() else existing.parent
    try:
        fd, probe = tempfile.mkstemp(prefix=".cachetune-probe-", dir=folder)
    except OSError as exc:
        raise CachetuneError(f"cannot write here: {exc.strerror} ({option})", path) from None
    os.close(fd)
    os.unlink(probe)


def check_output(path: PathLike, option: str, *, overwrite: bool = False, folder: bool = False,
                 results: Iterable[str] = ()) -> Path:
    """Everything a command checks about its output before it starts; returns ``path``.

    ``folder``: the output is a folder, and ``results`` are the files in it that a second run
    would replace (none there, or ``overwrite``). Otherwise the output is a file, replaced only
    with ``overwrite``.
    """
    path = Path(path).expanduser()
    registry = registry_containing(path)
    if registry is not None:
        raise CachetuneError(f"is inside the adapter registry {registry.parent}: only `cachetune adapters` and "
                             f"--register write there ({option})", path)
    if folder:
        if path.exists() and not path.is_dir():
            raise CachetuneError(f"exists and is not a folder ({option})", path)
        present = [name for name in results if (path / name).exists()]
        if present and not overwrite:
            raise CachetuneError(f"already holds {present[0]} (pass --overwrite to replace it) ({option})", path)
    elif path.exists():
        if path.is_dir():
            raise CachetuneError(f"is a folder, not a file ({option})", path)
        if not overwrite:
            raise CachetuneError(f"exists (pass --overwrite to replace it) ({option})", path)
    check_writable(path, option)
    return path
