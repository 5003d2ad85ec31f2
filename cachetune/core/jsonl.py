"""Reading and writing JSON Lines safely.

Readers name the file and line of a bad record. Writers either append whole lines with a
flush (resumable outputs) or write to a temporary file renamed into place only when
complete, so a failed run never leaves a partial output behind. Also the one check of a triplet
row's fields (:func:`check_triplet_fields`), shared by the trainer's reader and the domains' readers.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Iterable, Tuple, Union

from cachetune.core.errors import CachetuneError
from cachetune.core.textfiles import reading_text

PathLike = Union[str, Path]
TRIPLET_FIELDS = ("anchor", "positive", "negative")


def iter_jsonl(path: PathLike, *, skip_blank: bool = True) -> Iterator[Tuple[int, dict]]:
    """Yield ``(line_number, object)``; a line that is not a JSON object is an error naming it."""
    path = Path(path)
    if not path.exists():
        raise CachetuneError("file not found", path)
    with reading_text(path), open(path, "r", encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                if skip_blank:
                    continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CachetuneError(f"invalid JSON: {exc.msg} (column {exc.colno})", path, number) from None
            if not isinstance(obj, dict):
                raise CachetuneError(f"expected a JSON object, got {type(obj).__name__}", path, number)
            yield number, obj


def read_json(path: PathLike):
    """A whole JSON file; a missing file or bad JSON is an error naming the file (and line)."""
    path = Path(path)
    if not path.is_file():
        raise CachetuneError("file not found", path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CachetuneError(f"invalid JSON: {exc.msg}", path, exc.lineno) from None


def read_jsonl(path: PathLike) -> list:
    return [obj for _, obj in iter_jsonl(path)]


@contextmanager
def atomic_writer(path: PathLike, mode: str = "w") -> Iterator:
    """Open a temporary file beside ``path``; rename it over ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_json(path: PathLike, obj) -> None:
    with atomic_writer(path) as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False, sort_keys=False)
        fh.write("\n")


def write_jsonl(path: PathLike, rows: Iterable[dict]) -> int:
    count = 0
    with atomic_writer(path) as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def check_triplet_fields(row: dict, path, line: int, fields=TRIPLET_FIELDS) -> None:
    """Each of ``fields`` present, a string and not blank; else an error naming the field and line."""
    for name in fields:
        value = row.get(name)
        if name not in row or value is None:
            raise CachetuneError(f"triplet has no '{name}' field", path, line)
        if not isinstance(value, str):
            raise CachetuneError(f"'{name}' must be a string, got {type(value).__name__}", path, line)
        if not value.strip():
            raise CachetuneError(f"'{name}' is empty", path, line)
