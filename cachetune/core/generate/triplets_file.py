"""The triplets file of ``generate``: appended query by query under a lock, and resumable.

A query's lines are written with one ``os.write`` call on an ``O_APPEND`` descriptor (no Python
buffer that a crash could leave half flushed), and an exclusive ``flock`` keeps a second run off
the file. :func:`scan_output` is what a rerun does first: it repairs the tail a killed run may
have left and says which query ids are done. Queries that gave no triplet are listed in a
sidecar, ``T.jsonl.no-triplets`` (one id per line), so a rerun does not ask for them again: its
seeded requests would get the same replies. Delete the sidecar to retry them (e.g. after
changing the filter thresholds).

A third sidecar, ``T.jsonl.made-by.json``, records what made the rows (generator, prompts,
options: :func:`keep_rows_of`). A resume keeps only rows made the same way, for queries still
in the input; anything else is moved aside to ``T.jsonl.stale-<time>`` and named in the log.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from cachetune.core.errors import CachetuneError


def no_triplets_path(path: Path) -> Path:
    """The sidecar listing the query ids that were asked and gave no triplet."""
    return path.with_name(path.name + ".no-triplets")


def _scan_no_triplets(path: Path) -> set:
    sidecar = no_triplets_path(path)
    if not sidecar.exists():
        return set()
    data = sidecar.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):  # a killed write: that query is asked again
        os.truncate(sidecar, len(complete))
    return {line.strip() for line in complete.decode("utf-8", "replace").splitlines() if line.strip()}


def scan_output(path: Path, domain: str) -> Tuple[set, int, int]:
    """Repair a torn tail and return ``(done query ids, triplet lines kept, lines dropped)``.

    Done ids include those of the ``.no-triplets`` sidecar.

    A line without its newline is what a killed write leaves; it is dropped together with the
    lines of the last complete query id before it, since a query's lines are written by one
    ``write`` that the kill may have cut anywhere. A bad line elsewhere is not ours to fix.
    """
    empty = _scan_no_triplets(path)
    data = path.read_bytes() if path.exists() else b""
    if not data:
        return empty, 0, 0
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
    return set(ids) | empty, len(ids), dropped


def made_by_path(path: Path) -> Path:
    return path.with_name(path.name + ".made-by.json")


def keep_rows_of(path: Path, made_by: dict, query_ids: set, log=lambda message: None) -> None:
    """Make ``path`` (and its ``.no-triplets``) hold only rows made as ``made_by`` says, for
    ``query_ids``: output made otherwise (or by a run that did not record how) is moved aside
    whole; lines of queries no longer in the input are moved aside. Then records ``made_by``."""
    import time

    sidecar, no_triplets = made_by_path(path), no_triplets_path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    recorded = None
    if sidecar.exists():
        try:
            recorded = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            recorded = None
    has_rows = (path.exists() and path.stat().st_size > 0) or no_triplets.exists()
    if has_rows and recorded != made_by:
        moved = None
        for old in (path, no_triplets):
            if old.exists():
                # Copied, then emptied in place: the caller's TripletWriter holds ``path`` open (and
                # locked); a rename would send the new rows after the old ones, into the stale file.
                aside = _stale_name(old, stamp)
                if old == path:
                    shutil.copyfile(old, aside)
                    os.truncate(old, 0)
                else:  # the sidecar is opened later, on the first query without triplets
                    os.replace(old, aside)
                moved = moved or aside
        log(f"{path} was made by another generator, prompts or options: moved aside to "
            f"{moved.name if moved else 'nothing'}; generating afresh")
    elif has_rows:
        for old in (path, no_triplets):
            if not old.exists():
                continue
            lines = old.read_bytes().splitlines(keepends=True)
            keep, gone = [], []
            for line in lines:
                text = line.decode("utf-8", "replace").strip()
                qid = text if old is no_triplets else _query_id(text)
                (keep if qid is None or qid in query_ids else gone).append(line)
            if gone:
                aside = _stale_name(old, stamp)
                with open(aside, "wb") as fh:
                    fh.writelines(gone)
                with open(old, "r+b") as fh:
                    fh.writelines(keep)
                    fh.truncate()
                log(f"{old}: {len(gone)} line(s) of queries no longer in the input moved to {aside.name}")
    sidecar.write_text(json.dumps(made_by, sort_keys=True) + "\n", encoding="utf-8")


def _stale_name(path: Path, stamp: str) -> Path:
    """``path.stale-<stamp>``, or ``-2``, ``-3``... after it: two moves in one second never overwrite."""
    candidate, n = path.with_name(f"{path.name}.stale-{stamp}"), 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.stale-{stamp}-{n}")
    return candidate


def _query_id(line: str) -> Optional[str]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None  # a torn or foreign line: scan_output deals with it
    return row.get("query_id") if isinstance(row, dict) else None


class TripletWriter:
    """Appends a query's lines with one ``os.write`` (no Python buffering) under an exclusive lock;
    the id of a query without triplets goes to the ``.no-triplets`` sidecar the same way."""

    def __init__(self, path: Path):
        self.path = path
        self.empty_fd = None
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
        no_triplets_path(self.path).unlink(missing_ok=True)

    def write(self, rows: Sequence[dict], query_id: Optional[str] = None) -> None:
        """Append ``rows``; with none, record ``query_id`` (when given) as asked without triplets."""
        if rows:
            _write_all(self.fd, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8"))
        elif query_id:
            if self.empty_fd is None:
                self.empty_fd = os.open(no_triplets_path(self.path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            _write_all(self.empty_fd, (query_id + "\n").encode("utf-8"))

    def close(self) -> None:
        if self.empty_fd is not None:
            os.close(self.empty_fd)
        os.close(self.fd)


def _write_all(fd: int, data: bytes) -> None:
    while data:  # a short write only happens on odd filesystems; finish it
        written = os.write(fd, data)
        data = data[written:]
