"""The registry's index: one JSON file, replaced atomically, changed under a file lock.

Readers never lock: the file is only ever replaced by ``os.replace`` of a complete
temporary file, so a reader sees the old index or the new one, never half of one.
Writers take an exclusive lock (``filelock``) around read-modify-write, so two processes
registering at once cannot both hand out the same version or lose each other's record.

Every read validates every record (names, versions, the folder each one points at, its file
names), so a hand-edited or hostile index is one error naming ``index.json`` before anything
is loaded, copied or deleted.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from cachetune.core.errors import CachetuneError
from cachetune.core.jsonl import write_json
from cachetune.core.outputs import REGISTRY_INDEX_FILE

INDEX_FORMAT = 1
LOCK_TIMEOUT_S = 120.0
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Names of the files beside the adapter folders: an adapter named like one would collide with it.
RESERVED_NAMES = {REGISTRY_INDEX_FILE, REGISTRY_INDEX_FILE + ".lock"}
# The files a registered adapter may have (peft's two, the card, peft's README).
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors", "cachetune.json", "README.md"}
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def check_name(name: str) -> str:
    """An adapter name: a folder name under ``adapters/`` that cannot escape it or collide."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise CachetuneError(
            f"bad adapter name {name!r}: use letters, digits, '.', '_' or '-' (at most 64, no '@')"
        )
    if name.lower() in RESERVED_NAMES:
        raise CachetuneError(f"bad adapter name '{name}': reserved for the registry's own files")
    return name


def _is_version(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def record_problem(record) -> str:
    """What is wrong with one index record ('' when nothing is)."""
    if not isinstance(record, dict):
        return "is not an object"
    missing = [k for k in ("name", "version", "ref", "domain", "path", "base_model", "lora", "files")
               if k not in record]
    if missing:
        return f"has no '{missing[0]}'"
    name, version = record["name"], record["version"]
    try:
        check_name(name)
    except CachetuneError as exc:
        return exc.message
    if not _is_version(version):
        return f"has a bad version {version!r}"
    if record["ref"] != f"{name}@{version}":
        return f"has ref {record['ref']!r}, expected '{name}@{version}'"
    if record["path"] != f"{name}/{version}":
        return f"has path {record['path']!r}, expected '{name}/{version}'"
    if not isinstance(record["domain"], str) or not record["domain"]:
        return "has no domain"
    if not isinstance(record["base_model"], dict) or not isinstance(record["base_model"].get("id"), str):
        return "has no base_model.id"
    if not isinstance(record["lora"], dict):
        return "has a 'lora' that is not an object"
    files = record["files"]
    if not isinstance(files, dict) or not files:
        return "has no 'files'"
    for file_name, sha in files.items():
        if file_name not in ADAPTER_FILES:
            return f"lists a file {file_name!r} that is not an adapter file"
        if not isinstance(sha, str) or not SHA256_RE.match(sha):
            return f"has a bad sha256 for {file_name}"
    return ""


def validate_index(data, path: Path) -> dict:
    """``data`` if it is a well-formed index; else an error naming ``path`` and the first bad record."""
    if not isinstance(data, dict) or not isinstance(data.get("adapters"), list):
        raise CachetuneError("registry index has no 'adapters' list", path)
    fmt = data.get("format", INDEX_FORMAT)
    if not _is_version(fmt):
        raise CachetuneError(f"registry index has a bad format {fmt!r}", path)
    if fmt > INDEX_FORMAT:
        raise CachetuneError(f"registry index format {fmt} is newer than this cachetune understands", path)
    seen = set()
    for number, record in enumerate(data["adapters"], 1):
        problem = record_problem(record)
        if problem:
            ref = record.get("ref") if isinstance(record, dict) else None
            label = f"record {number}" + (f" ({ref})" if isinstance(ref, str) else "")
            raise CachetuneError(f"registry index {label} {problem}", path)
        if record["ref"] in seen:
            raise CachetuneError(f"registry index lists {record['ref']} twice", path)
        seen.add(record["ref"])
    next_version = data.setdefault("next_version", {})
    if not isinstance(next_version, dict) or not all(_is_version(v) for v in next_version.values()):
        raise CachetuneError("registry index has a bad 'next_version' (name: integer >= 1)", path)
    return data


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
        except UnicodeDecodeError:
            raise CachetuneError("registry index is not UTF-8 text", self.path) from None
        return validate_index(data, self.path)

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
