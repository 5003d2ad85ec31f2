"""Reading what ``cachetune evaluate`` evaluates: pair files, triplet files, a prepared holdout.

Every reader validates as it reads and raises :class:`CachetuneError` naming the file and the
line of the first bad row, before any model is loaded. Also here: where a domain's own
evaluation data is looked for (:func:`locate_eval_data`) and which query texts a prepared
folder trained on or held out (:func:`prepared_keys`), so evaluation sets can keep training
queries out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Set, Tuple

from cachetune.core.errors import CachetuneError
from cachetune.core.jsonl import iter_jsonl
from cachetune.core.textfiles import iter_csv
from cachetune.core.text import exact_key, normalize_query

PAIR_FIELDS = ("sentence1", "sentence2", "label")
TRIPLET_FIELDS = ("anchor", "positive", "negative")
HOLDOUT_QUERIES = "holdout.jsonl"
TRAIN_QUERIES = "train.jsonl"
# Triplets generated from the held-out queries, e.g. by
# ``cachetune generate --input DIR/holdout.jsonl --output DIR/holdout_triplets.jsonl``.
HOLDOUT_TRIPLETS = "holdout_triplets.jsonl"
DATA_ENV = "CACHETUNE_DATA_DIR"
CSV_SUFFIXES = {".csv": ",", ".tsv": "\t"}


@dataclass
class EvalInput:
    """One set to evaluate: ``kind`` is ``pairs`` (``sentence1``, ``sentence2``, ``label``
    rows) or ``triplets`` (``anchor``, ``positive``, ``negative`` rows)."""

    name: str
    kind: str
    rows: list
    source: str
    description: str = ""
    notes: List[str] = field(default_factory=list)
    metrics: Optional[Callable[[list, dict], dict]] = None


def parse_columns(spec: Optional[str], option: str = "--columns") -> Tuple[str, str, str]:
    """``"q1,q2,is_dup"`` -> the names holding sentence1, sentence2 and label."""
    if not spec:
        return PAIR_FIELDS
    names = tuple(part.strip() for part in spec.split(","))
    if len(names) != 3 or not all(names):
        raise CachetuneError(f"{option} must name three columns: sentence1,sentence2,label (got '{spec}')")
    if len(set(names)) != 3:
        raise CachetuneError(f"{option} names a column twice: '{spec}'")
    return names  # type: ignore[return-value]


def parse_label(value) -> int:
    """0/1 as a number or string, or a boolean; anything else is an error."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("0", "1", "0.0", "1.0"):
            return int(float(text))
        if text in ("true", "false"):
            return int(text == "true")
    raise ValueError(f"label must be 0 or 1, got {value!r}")


def _text(value, name: str, path, line) -> str:
    if value is None:
        raise CachetuneError(f"'{name}' is missing", path, line)
    if not isinstance(value, str):
        raise CachetuneError(f"'{name}' must be text, got {type(value).__name__}", path, line)
    text = normalize_query(value)
    if not text:
        raise CachetuneError(f"'{name}' is empty", path, line)
    return text


def _pair_row(raw: dict, columns, path, line) -> dict:
    c1, c2, cl = columns
    row = {"sentence1": _text(raw.get(c1), c1, path, line), "sentence2": _text(raw.get(c2), c2, path, line)}
    try:
        row["label"] = parse_label(raw.get(cl))
    except ValueError as exc:
        raise CachetuneError(f"'{cl}': {exc}", path, line) from None
    if raw.get("group") not in (None, ""):  # training pairs: rows of one question (see TrainingSet)
        row["group"] = str(raw["group"])
    return row


def _iter_csv(path: Path, delimiter: str, columns) -> Iterable[Tuple[int, dict]]:
    records = iter_csv(path, delimiter)
    header_line, header = next(records, (None, None))
    if header is None:
        raise CachetuneError("empty file (expected a header line: " + ",".join(columns) + ")", path)
    missing = [c for c in columns if c not in header]
    if missing:
        hint = "" if columns != PAIR_FIELDS else "; map other names with --columns a,b,label"
        raise CachetuneError(
            f"missing column{'s' if len(missing) > 1 else ''} {', '.join(repr(m) for m in missing)} "
            f"(header: {', '.join(header)}{hint})", path, header_line)
    for line, cells in records:
        if len(cells) != len(header):
            raise CachetuneError(f"{len(cells)} cells, but the header has {len(header)} columns", path, line)
        yield line, dict(zip(header, cells))


def read_pairs(path, columns: Optional[Sequence[str]] = None, both_labels: bool = True) -> List[dict]:
    """Labelled pairs from a CSV/TSV file with a header, or JSON Lines.

    ``columns`` maps (sentence1, sentence2, label) to the file's names; an optional ``group``
    field is kept. Texts are normalised (whitespace, NFC); both labels must occur when
    ``both_labels`` (evaluation: AP and AUC need both; training pairs may be positives only).
    """
    path = Path(path)
    columns = tuple(columns or PAIR_FIELDS)
    if path.is_dir():
        raise CachetuneError("expected a pairs file (CSV or JSONL), got a folder", path)
    if not path.exists():
        raise CachetuneError("file not found", path)
    delimiter = CSV_SUFFIXES.get(path.suffix.lower())
    rows: List[dict] = []
    if delimiter is not None:
        for line, raw in _iter_csv(path, delimiter, columns):
            rows.append(_pair_row(raw, columns, path, line))
    else:
        for line, raw in iter_jsonl(path):
            missing = [c for c in columns if c not in raw]
            if missing:
                hint = "" if columns != PAIR_FIELDS else "; map other names with --columns a,b,label"
                raise CachetuneError(f"missing field{'s' if len(missing) > 1 else ''} "
                                     f"{', '.join(repr(m) for m in missing)} (fields: {', '.join(raw)}{hint})",
                                     path, line)
            rows.append(_pair_row(raw, columns, path, line))
    if not rows:
        raise CachetuneError("no pairs in the file" + (" (only a header)" if delimiter else " (empty file)"), path)
    if both_labels:
        check_pair_labels(rows, path)
    return rows


def check_pair_labels(rows: Sequence[dict], where) -> None:
    positives = sum(1 for r in rows if r["label"] == 1)
    if positives == 0 or positives == len(rows):
        raise CachetuneError(f"pairs need both labels to measure precision (label 1: {positives}, "
                             f"label 0: {len(rows) - positives})", where)


def read_triplets(path, domain: Optional[str] = None) -> Tuple[List[dict], List[str]]:
    """Triplets ``{"anchor", "positive", "negative", ...}`` from JSON Lines.

    Rows whose ``domain`` names another domain are skipped with a note (a multi-domain
    file evaluates per domain); exact repeats are skipped too.
    """
    path = Path(path)
    if path.is_dir():
        raise CachetuneError("expected a triplets JSONL file, got a folder", path)
    rows, seen, other, repeats = [], set(), 0, 0
    for line, raw in iter_jsonl(path):
        missing = [c for c in TRIPLET_FIELDS if c not in raw]
        if missing:
            raise CachetuneError(f"triplet has no {', '.join(repr(m) for m in missing)} field "
                                 f"(fields: {', '.join(raw)})", path, line)
        row = {name: _text(raw[name], name, path, line) for name in TRIPLET_FIELDS}
        if domain is not None and raw.get("domain") not in (None, domain):
            other += 1
            continue
        key = (row["anchor"], row["positive"], row["negative"])
        if key in seen:
            repeats += 1
            continue
        seen.add(key)
        if raw.get("query_id") is not None:
            row["query_id"] = raw["query_id"]
        rows.append(row)
    notes = []
    if other:
        notes.append(f"{other} triplets of other domains skipped")
    if repeats:
        notes.append(f"{repeats} repeated triplets skipped")
    if not rows:
        if other:
            raise CachetuneError(f"no triplets for domain '{domain}' ({other} of other domains)", path)
        raise CachetuneError("no triplets in the file (empty file)", path)
    return rows, notes


def _query_keys(path: Path) -> Set[str]:
    keys = set()
    for line, raw in iter_jsonl(path):
        if not isinstance(raw.get("query"), str):
            raise CachetuneError("prepared query has no 'query' text", path, line)
        keys.add(exact_key(raw["query"]))
    return keys


def prepared_keys(folder) -> Tuple[Set[str], Set[str]]:
    """(held-out query keys, training query keys) of a ``cachetune prepare`` folder.

    Keys are :func:`cachetune.core.text.exact_key` of the queries; ``train.jsonl`` may be
    absent (only held-out queries were shipped), then the second set is empty.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CachetuneError("--holdout expects a prepared folder (from `cachetune prepare`)", folder)
    held_file = folder / HOLDOUT_QUERIES
    if not held_file.exists():
        raise CachetuneError(f"no {HOLDOUT_QUERIES} in the prepared folder", folder)
    train_file = folder / TRAIN_QUERIES
    return _query_keys(held_file), (_query_keys(train_file) if train_file.exists() else set())


def read_holdout(folder, domain: Optional[str] = None) -> Optional[EvalInput]:
    """The held-out triplets of a prepared folder (``holdout_triplets.jsonl``), if any.

    Triplets whose positive (the original query) or anchor is a training query are dropped
    and counted: they would measure memorisation, not generalisation.
    """
    folder = Path(folder)
    held, train = prepared_keys(folder)
    path = folder / HOLDOUT_TRIPLETS
    if not path.exists():
        return None
    rows, notes = read_triplets(path, domain)
    kept = [r for r in rows if exact_key(r["positive"]) not in train and exact_key(r["anchor"]) not in train]
    if len(kept) < len(rows):
        notes.append(f"{len(rows) - len(kept)} triplets whose query is a training query dropped")
    if not kept:
        raise CachetuneError("every held-out triplet uses a training query", path)
    outside = sum(1 for r in kept if exact_key(r["positive"]) not in held)
    if outside:
        notes.append(f"{outside} triplets whose positive is not a held-out query (kept)")
    return EvalInput("holdout-triplets", "triplets", kept, str(path),
                     "triplets generated from the held-out queries", notes)


def shared_data_dir() -> Path:
    """``../shared/data`` beside a development checkout of cachetune."""
    # cachetune/core/evaluate/inputs.py -> the folder that holds the checkout
    return Path(__file__).resolve().parents[4] / "shared" / "data"


def sample_rows(rows: list, context) -> list:
    """At most ``context.limit`` of ``rows`` (a seeded sample, in their order); all when no limit."""
    import random

    if context.limit and len(rows) > context.limit:
        keep = sorted(random.Random(context.seed).sample(range(len(rows)), context.limit))
        rows = [rows[i] for i in keep]
    return rows


def locate_eval_data(context, relative: str) -> Optional[Path]:
    """Where a domain's own evaluation data is: ``context.source`` when given (it must
    exist), else ``relative`` under ``context.data_dir``, ``$CACHETUNE_DATA_DIR``, or the
    ``../shared/data`` folder beside a development checkout. ``None`` when nowhere."""
    if context.source:
        path = Path(os.path.expanduser(str(context.source)))
        if not path.exists():
            raise CachetuneError("evaluation data not found (--eval-source)", path)
        return path
    roots = [context.data_dir, os.environ.get(DATA_ENV), shared_data_dir()]
    for root in roots:
        if root and (Path(root) / relative).exists():
            return Path(root) / relative
    return None
