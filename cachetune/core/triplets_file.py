"""The triplets file of ``generate``: appended query by query under a lock, and resumable.

A query's lines are written with one ``os.write`` call on an ``O_APPEND`` descriptor (no Python
buffer that a crash could leave half flushed), and an exclusive ``flock`` keeps a second run off
the file. :func:`scan_output` is what a rerun does first: it repairs the tail a killed run may
have left and says which query ids are done.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Sequence, Tuple

from cachetune.core.errors import CachetuneError


def scan_output(path: Path, domain: str) -> Tuple[set, int, int]:
    """Repair a torn tail and return ``(done query ids, triplet lines kept, lines dropped)``.

    A line without its newline is what a killed write leaves; it is dropped together with the
    lines of the last complete query id before it, since a query's lines are written by one
    ``write`` that the kill may have cut anywhere. A bad line elsewhere is not ours to fix.
    """
    data = path.read_bytes()
    if not data:
        return set(), 0, 0
    torn = not data.endswith(b"\n")
    complete = data[: data.rfind(b"\n") + 1] if torn else data
    lines = complete.splitlines(keepends=True)
    ids: List[str] = []
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CachetuneError(f"not a triplet line ({exc.msg}); fix it, or rerun with --no-resume to start over",
                                 path, number) from None
        if not isinstance(row, dict) or not isinstance(row.get("query_id"), str):
            raise CachetuneError("not a triplet line (no 'query_id'); rerun with --no-resume to start over",
                                 path, number)
        if row.get("domain") not in (None, domain):
            raise CachetuneError(f"holds triplets of domain '{row['domain']}', not '{domain}'", path, number)
        ids.append(row["query_id"])
    dropped = 1 if torn else 0
    if torn and ids:
        last = ids[-1]
        while ids and ids[-1] == last:
            ids.pop()
            lines.pop()
            dropped += 1
    if torn:
        os.truncate(path, sum(len(line) for line in lines))
    return set(ids), len(ids), dropped


class TripletWriter:
    """Appends a query's lines with one ``os.write`` (no Python buffering) under an exclusive lock."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            import fcntl

            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - no flock on Windows; one writer is then up to the user
            pass
        except OSError:
            os.close(self.fd)
            raise CachetuneError("another `cachetune generate` is writing this file", path) from None

    def truncate(self) -> None:
        os.ftruncate(self.fd, 0)

    def write(self, rows: Sequence[dict]) -> None:
        if not rows:
            return
        data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
        while data:  # a short write only happens on odd filesystems; finish it
            written = os.write(self.fd, data)
            data = data[written:]

    def close(self) -> None:
        os.close(self.fd)
