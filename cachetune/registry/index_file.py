"""The registry's index: one JSON file, replaced atomically, changed under a file lock.

Readers never lock: the file is only ever replaced by ``os.replace`` of a complete
temporary file, so a reader sees the old index or the new one, never half of one.
Writers take an exclusive lock (``filelock``) around read-modify-write, so two processes
registering at once cannot both hand out the same version or lose each other's record.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from cachetune.core.errors import CachetuneError
from cachetune.core.jsonl import write_json

INDEX_FORMAT = 1
LOCK_TIMEOUT_S = 120.0


def empty_index() -> dict:
    return {"format": INDEX_FORMAT, "next_version": {}, "adapters": []}


class IndexFile:
    """``index.json`` plus its lock file beside it."""

    def __init__(self, path: Path, timeout: float = LOCK_TIMEOUT_S):
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.timeout = timeout

    def read(self) -> dict:
        """The current index (an empty one when the registry is new)."""
        if not self.path.exists():
            return empty_index()
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise CachetuneError(f"registry index is not valid JSON: {exc.msg}", self.path, exc.lineno) from None
        if not isinstance(data, dict) or not isinstance(data.get("adapters"), list):
            raise CachetuneError("registry index has no 'adapters' list", self.path)
        if data.get("format", INDEX_FORMAT) > INDEX_FORMAT:
            raise CachetuneError(
                f"registry index format {data['format']} is newer than this cachetune understands", self.path
            )
        data.setdefault("next_version", {})
        return data

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the writers' lock (nothing else)."""
        from filelock import FileLock, Timeout

        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.lock_path), timeout=self.timeout)
        try:
            lock.acquire()
        except Timeout:
            raise CachetuneError(
                f"registry is locked by another process (waited {self.timeout:.0f} s)", self.lock_path
            ) from None
        try:
            yield
        finally:
            lock.release()

    @contextmanager
    def update(self) -> Iterator[dict]:
        """Read, let the caller change, then atomically write the index, all under the lock.

        An exception inside the block leaves the index file as it was.
        """
        with self.locked():
            data = self.read()
            yield data
            write_json(self.path, data)
