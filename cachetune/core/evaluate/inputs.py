"""Reading what ``cachetune evaluate`` evaluates: pair files, triplet files, a prepared holdout.

Every reader validates as it reads and raises :class:`CachetuneError` naming the file and the
line of the first bad row, before any model is loaded. Also here: which query texts a prepared
folder trained on or held out (:func:`prepared_keys`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, FrozenSet, Iterable, List, Optional, Sequence, Set, Tuple

from cachetune.core.errors import CachetuneError
from cachetune.core.jsonl import iter_jsonl
from cachetune.core.textfiles import iter_csv
from cachetune.core.text import exact_key, near_key, normalize_query

PAIR_FIELDS = ("sentence1", "sentence2", "label")
INCLUSION = "inclusion_probability"  # optional: how likely `calibrate --suggest` was to pick the pair
TRIPLET_FIELDS = ("anchor", "positive", "negative")
HOLDOUT_QUERIES = "holdout.jsonl"
TRAIN_QUERIES = "train.jsonl"
# Triplets generated from the held-out queries, e.g. by
# ``cachetune generate --input DIR/holdout.jsonl --output DIR/holdout_triplets.jsonl``.
HOLDOUT_TRIPLETS = "holdout_triplets.jsonl"
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
    if raw.get(INCLUSION) not in (None, ""):  # pairs sampled by `calibrate --suggest`
        row[INCLUSION] = _probability(raw[INCLUSION], path, line)
    return row


def _probability(value, path, line) -> float:
    try:
        p = float(value)
    except (TypeError, ValueError):
        p = float("nan")
    if not 0.0 < p <= 1.0:
        raise CachetuneError(f"'{INCLUSION}': expected a probability in (0, 1], got {value!r}", path, line)
    return p


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
    lines: List[int] = []
    if delimiter is not None:
        for line, raw in _iter_csv(path, delimiter, columns):
            rows.append(_pair_row(raw, columns, path, line))
            lines.append(line)
    else:
        for line, raw in iter_jsonl(path):
            missing = [c for c in columns if c not in raw]
            if missing:
                hint = "" if columns != PAIR_FIELDS else "; map other names with --columns a,b,label"
                raise CachetuneError(f"missing field{'s' if len(missing) > 1 else ''} "
                                     f"{', '.join(repr(m) for m in missing)} (fields: {', '.join(raw)}{hint})",
                                     path, line)
            rows.append(_pair_row(raw, columns, path, line))
            lines.append(line)
    if not rows:
        raise CachetuneError("no pairs in the file" + (" (only a header)" if delimiter else " (empty file)"), path)
    clash = conflicting_labels(rows)
    if clash:
        first, second = clash
        raise CachetuneError(f"the same two texts are labelled {rows[second]['label']} here and "
                             f"{rows[first]['label']} on line {lines[first]}: one of the labels is wrong", path,
                             lines[second])
    if both_labels:
        check_pair_labels(rows, path)
    return rows


def pair_key(row: dict) -> Tuple[str, str]:
    """Two rows with this key hold the same two texts (either order, case aside): every model
    scores them alike."""
    return tuple(sorted((exact_key(row["sentence1"]), exact_key(row["sentence2"]))))


def conflicting_labels(rows: Sequence[dict]) -> Optional[Tuple[int, int]]:
    """The first (earlier, later) row indices holding the same two texts with different labels.

    Such a pair ties with itself, so one of its rows is a false hit (or a lost one) for every
    model at every threshold: a label error that no training can fix, which moves the stored
    threshold and the hit rate at a target precision of every model measured on the set.
    """
    first_with_label: dict = {}
    for index, row in enumerate(rows):
        seen = first_with_label.setdefault(pair_key(row), {})
        seen.setdefault(row["label"], index)
        other = seen.get(1 - row["label"])
        if other is not None:
            return other, index
    return None


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


def _prepared(path: Path, filler_words) -> Tuple[Set[tuple], Set[str]]:
    keys, ids = set(), set()
    for line, raw in iter_jsonl(path):
        if not isinstance(raw.get("query"), str):
            raise CachetuneError("prepared query has no 'query' text", path, line)
        keys.add(near_key(raw["query"], filler_words))
        if raw.get("id") is not None:
            ids.add(str(raw["id"]))
    return keys, ids


def prepared_keys(folder, filler_words: FrozenSet[str] = frozenset()) -> Tuple[Set[tuple], Set[tuple]]:
    """(held-out query keys, training query keys) of a ``cachetune prepare`` folder.

    Keys are the rule ``prepare`` deduplicates by (:func:`cachetune.core.text.near_key` with
    the domain's ``filler_words``), so a reworded copy of a training query counts as one;
    ``train.jsonl`` may be absent (only held-out queries were shipped), then the second set is empty.
    """
    held, _, train, _ = _prepared_folder(folder, filler_words)
    return held, train


def _prepared_folder(folder, filler_words):
    folder = Path(folder)
    if not folder.is_dir():
        raise CachetuneError("--holdout expects a prepared folder (from `cachetune prepare`)", folder)
    held_file = folder / HOLDOUT_QUERIES
    if not held_file.exists():
        raise CachetuneError(f"no {HOLDOUT_QUERIES} in the prepared folder", folder)
    train_file = folder / TRAIN_QUERIES
    held, held_ids = _prepared(held_file, filler_words)
    train, train_ids = _prepared(train_file, filler_words) if train_file.exists() else (set(), set())
    return held, held_ids, train, train_ids


def drop_training_pairs(rows: List[dict], folder, filler_words: FrozenSet[str] = frozenset()) -> List[dict]:
    """The pairs of which neither side is a training query of the prepared ``folder`` (by
    :func:`prepared_keys`); all of them when ``folder`` is ``None``."""
    if folder is None:
        return list(rows)
    _, train = prepared_keys(folder, filler_words)
    return [r for r in rows if near_key(r["sentence1"], filler_words) not in train
            and near_key(r["sentence2"], filler_words) not in train]


def check_held_out_triplets(rows: List[dict], path, folder, filler_words: FrozenSet[str] = frozenset()) -> None:
    """Held-out triplets measure generalisation only if none was made from a training query:
    a triplet whose ``query_id`` is a training query's, or whose positive (the original query)
    is one by ``prepare``'s rule, is an error naming the query."""
    _, _, train, train_ids = _prepared_folder(folder, filler_words)
    for row in rows:
        if str(row.get("query_id")) in train_ids or near_key(row["positive"], filler_words) in train:
            named = f"{row['query_id']}: " if row.get("query_id") is not None else ""
            raise CachetuneError(f"held-out triplets made from a training query ({named}{row['positive']!r}); "
                                 "regenerate them from the held-out split", path)


def read_holdout(folder, domain: Optional[str] = None, filler_words: FrozenSet[str] = frozenset()
                 ) -> Optional[EvalInput]:
    """The held-out triplets of a prepared folder (``holdout_triplets.jsonl``), if any; a
    triplet made from a training query is an error (:func:`check_held_out_triplets`)."""
    folder = Path(folder)
    held, _ = prepared_keys(folder, filler_words)
    path = folder / HOLDOUT_TRIPLETS
    if not path.exists():
        return None
    rows, notes = read_triplets(path, domain)
    check_held_out_triplets(rows, path, folder, filler_words)
    outside = sum(1 for r in rows if near_key(r["positive"], filler_words) not in held)
    if outside:
        notes.append(f"{outside} triplets whose positive is not a held-out query (kept)")
    return EvalInput("holdout-triplets", "triplets", rows, str(path),
                     "triplets generated from the held-out queries", notes)


def sample_rows(rows: list, context) -> list:
    """At most ``context.limit`` of ``rows`` (a seeded sample, in their order); all when no limit."""
    import random

    if context.limit and len(rows) > context.limit:
        keep = sorted(random.Random(context.seed).sample(range(len(rows)), context.limit))
        rows = [rows[i] for i in keep]
    return rows
