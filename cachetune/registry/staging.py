"""Staging folders of registry adds in progress, and the ones a killed add left behind.

``adapters add`` copies an adapter into ``adapters/.staging/<name>-<random>/`` before renaming
it into place. Each staging folder is held under its own file lock for as long as its add
runs; the operating system drops the lock when the process dies. So a staging folder whose
lock can be taken is stale: nothing will ever finish it, and it only wastes space.
"""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List

LOCK_SUFFIX = ".lock"


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@contextmanager
def staging_folder(root: Path, prefix: str) -> Iterator[Path]:
    """A new, empty folder under ``root``, locked while the block runs and removed after it
    (a caller that renamed it away leaves nothing to remove)."""
    from filelock import FileLock

    root.mkdir(parents=True, exist_ok=True)
    folder = root / f"{prefix}-{uuid.uuid4().hex[:12]}"
    lock = FileLock(str(folder) + LOCK_SUFFIX)
    lock.acquire()  # before the folder exists: no one ever sees it unlocked
    try:
        folder.mkdir()
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        lock.release()
        _unlink(lock.lock_file)


def _is_stale(path: Path) -> bool:
    """Whether ``path``'s lock is free (it is taken and released at once)."""
    from filelock import FileLock, Timeout

    lock_path = str(path) + LOCK_SUFFIX
    existed = os.path.exists(lock_path)
    lock = FileLock(lock_path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return False
    lock.release()
    if not existed:
        _unlink(lock_path)
    return True


def stale_folders(root: Path) -> List[Path]:
    """Staging folders under ``root`` that no running add holds."""
    if not root.is_dir():
        return []
    return [p for p in sorted(root.iterdir()) if not p.name.endswith(LOCK_SUFFIX) and _is_stale(p)]


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def remove_stale(root: Path) -> List[Path]:
    """Remove the stale staging folders under ``root`` (and locks without a folder); return them."""
    removed = stale_folders(root)
    for folder in removed:
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)
        else:
            _unlink(str(folder))
        _unlink(str(folder) + LOCK_SUFFIX)
    if root.is_dir():
        for lock in root.glob(f"*{LOCK_SUFFIX}"):
            folder = Path(str(lock)[: -len(LOCK_SUFFIX)])
            if not folder.exists() and _is_stale(folder):
                _unlink(str(lock))
    return removed
