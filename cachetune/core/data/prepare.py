"""Stage 1: read a domain's queries, clean and deduplicate them, split train / held-out.

Outputs ``train.jsonl`` and ``holdout.jsonl`` (one ``{"id", "query", "domain", "source"}``
per line, plus ``meta`` when the source had extra fields) and ``prepare.json`` with counts.
The split is by group where the source has one (the domain's ``group_field``, or
``--group-field``: a CoNaLa question, a MedQuAD focus), so rewordings of one question never
sit on both sides; records a domain reserved for its evaluation set are left out.
All three are written to temporary files and renamed into place at the end, so a run that
fails on bad input leaves no partial output.
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional

from cachetune.core.types import Domain, QueryRecord
from cachetune.core.errors import CachetuneError
from cachetune.core.jsonl import atomic_writer, write_json
from cachetune.core.outputs import check_output
from cachetune.core.data.sources import GENERIC_READERS, resolve_reader
from cachetune.core.text import exact_key, near_key, normalize_query

# A QueryRecord.meta flag: the record belongs to the domain's packaged evaluation data.
RESERVED = "reserved_for_evaluation"
TRAIN_FILE = "train.jsonl"
HOLDOUT_FILE = "holdout.jsonl"
STATS_FILE = "prepare.json"


@dataclass
class PrepareStats:
    read: int = 0
    empty: int = 0
    reserved_for_evaluation: int = 0
    too_short: int = 0
    too_long: int = 0
    exact_duplicates: int = 0
    case_duplicates: int = 0
    near_duplicates: int = 0
    limited: int = 0
    kept: int = 0
    train: int = 0
    holdout: int = 0
    by_source: Dict[str, int] = field(default_factory=dict)


def query_id(domain: str, query: str) -> str:
    """A stable id: the same query gets the same id in every run."""
    return f"{domain}-{hashlib.sha1(exact_key(query).encode('utf-8')).hexdigest()[:12]}"


def _source_label(record: QueryRecord, fallback: str) -> str:
    return str(record.meta.get("source") or fallback)


def clean_queries(
    domain: Domain, records: Iterable[QueryRecord], stats: PrepareStats, source_label: str
) -> List[dict]:
    """Normalise, drop empty / out-of-bounds / duplicate queries; first occurrence wins."""
    seen_text, seen_exact, seen_near = set(), set(), set()
    kept: List[dict] = []
    for record in records:
        stats.read += 1
        if record.meta.get(RESERVED):
            stats.reserved_for_evaluation += 1
            continue
        if record.query is not None and not isinstance(record.query, str):
            # str() would keep "['a', 'b']" as a query: a list or number is not a query text
            raise CachetuneError(f"the query is a {type(record.query).__name__}, not text "
                                 f"(--query-field names the field that holds it)", record.origin)
        text = normalize_query(record.query)
        if not text:
            stats.empty += 1
            continue
        if len(text) < domain.min_chars:
            stats.too_short += 1
            continue
        if len(text) > domain.max_chars:
            stats.too_long += 1
            continue
        if text in seen_text:
            stats.exact_duplicates += 1
            continue
        seen_text.add(text)
        key = exact_key(text)
        if key in seen_exact:  # same text up to case: counted apart so both rules show
            stats.case_duplicates += 1
            continue
        seen_exact.add(key)
        nkey = near_key(text, domain.filler_words)
        if nkey in seen_near:
            stats.near_duplicates += 1
            continue
        seen_near.add(nkey)
        row = {"id": query_id(domain.name, text), "query": text, "domain": domain.name,
               "source": _source_label(record, source_label)}
        if record.meta:
            row["meta"] = {k: v for k, v in record.meta.items() if k != "source"}
        kept.append(row)
    return kept


def _group_of(row: dict, group_field: Optional[str]):
    value = (row.get("meta") or {}).get(group_field) if group_field else None
    return ("group", str(value)) if value not in (None, "") else ("query", row["id"])


def split_queries(rows: List[dict], holdout: float, seed: int, group_field: Optional[str] = None):
    """Seeded shuffle of the groups, then whole groups are held out until the ``holdout``
    fraction of queries is reached.

    Queries are unique after cleaning and a group never straddles the split, so no query
    text and no group lands in both parts. A row without the group field is its own group.
    """
    if not 0.0 <= holdout < 1.0:
        raise CachetuneError(f"--holdout must be in [0, 1), got {holdout}")
    groups: Dict[tuple, List[dict]] = {}
    for row in sorted(rows, key=lambda r: r["id"]):  # independent of source order
        groups.setdefault(_group_of(row, group_field), []).append(row)
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    n_holdout = int(round(len(rows) * holdout))
    if holdout > 0 and len(rows) >= 2:
        n_holdout = max(1, n_holdout)
    train: List[dict] = []
    held: List[dict] = []
    for key in order:
        # A group is held out when that brings the held-out side closer to its share and
        # leaves some training queries; otherwise it trains.
        size, short = len(groups[key]), n_holdout - len(held)
        if size - short < short and len(held) + size < len(rows):
            held.extend(groups[key])
        else:
            train.extend(groups[key])
    if n_holdout and not held and len(groups) >= 2:  # every group larger than twice the share
        smallest = min(order, key=lambda k: (len(groups[k]), order.index(k)))
        held = groups[smallest]
        train = [r for r in train if _group_of(r, group_field) != smallest]
    return train, held


def read_source(domain: Domain, source: str, readers, options: dict) -> Iterable[QueryRecord]:
    reader = resolve_reader(source, [*domain.readers, *readers, *GENERIC_READERS])
    return reader.read(source, options)


def prepare(
    domain: Domain,
    output: Path,
    *,
    source: Optional[str] = None,
    limit: Optional[int] = None,
    holdout: float = 0.1,
    seed: int = 0,
    readers=(),
    query_field: Optional[str] = None,
    group_field: Optional[str] = None,
    progress: Optional[Callable[[Iterable], Iterable]] = None,
    overwrite: bool = False,
) -> dict:
    """Run the prepare stage; returns the ``prepare.json`` summary.

    Outputs already in ``output`` are replaced only with ``overwrite``.
    ``group_field`` (default: the domain's) names the meta field whose queries stay on one
    side of the split; a field no record has is an error.
    """
    started = time.time()
    source = str(source if source is not None else domain.default_source)
    if limit is not None and limit <= 0:
        raise CachetuneError(f"--limit must be positive, got {limit}")
    if not 0.0 <= holdout < 1.0:
        raise CachetuneError(f"--holdout must be in [0, 1), got {holdout}")
    output = check_output(output, "--output", overwrite=overwrite, folder=True,
                          results=(TRAIN_FILE, HOLDOUT_FILE, STATS_FILE))

    records = read_source(domain, source, readers, {"query_field": query_field})
    if progress is not None:
        records = progress(records)
    stats = PrepareStats()
    rows = clean_queries(domain, records, stats, Path(source).name if Path(source).exists() else source)
    if not rows:
        raise CachetuneError(f"no usable queries (read {stats.read}, empty {stats.empty}, "
                             f"too short {stats.too_short}, too long {stats.too_long})", source)
    if limit is not None and len(rows) > limit:
        rows = sorted(rows, key=lambda r: r["id"])
        random.Random(seed).shuffle(rows)
        stats.limited = len(rows) - limit
        rows = rows[:limit]
    stats.kept = len(rows)
    for row in rows:
        stats.by_source[row["source"]] = stats.by_source.get(row["source"], 0) + 1
    group_field = group_field or domain.group_field
    if group_field and holdout > 0 and not any(group_field in (r.get("meta") or {}) for r in rows):
        if group_field != domain.group_field:
            raise CachetuneError(f"--group-field: no query has a '{group_field}' field", source)
        group_field = None  # a source without the domain's groups (the sample queries) splits per query
    train, held = split_queries(rows, holdout, seed, group_field)
    stats.train, stats.holdout = len(train), len(held)

    summary = {
        "domain": domain.name,
        "source": source,
        "seed": seed,
        "holdout_fraction": holdout,
        "limit": limit,
        "group_field": group_field,
        "groups": {"train": len({_group_of(r, group_field) for r in train}),
                   "holdout": len({_group_of(r, group_field) for r in held})},
        "counts": {k: v for k, v in vars(stats).items() if k != "by_source"},
        "by_source": dict(sorted(stats.by_source.items())),
        "near_duplicate_rule": "same content tokens in the same order (case, punctuation, filler words ignored)",
        "wall_time_s": round(time.time() - started, 3),
    }
    output.mkdir(parents=True, exist_ok=True)
    # Write all parts before renaming any, so bad input never leaves a mix of old and new.
    with atomic_writer(output / TRAIN_FILE) as ftrain, atomic_writer(output / HOLDOUT_FILE) as fheld:
        _dump(ftrain, train)
        _dump(fheld, held)
    write_json(output / STATS_FILE, summary)
    return summary


def _dump(fh, rows: List[dict]) -> None:
    import json

    for row in rows:
        fh.write(json.dumps(row, ensure_ascii=False) + "\n")
