"""Reading queries from a source: local files of several formats or a dataset hub id.

Resolution order for a ``--source``: the domain's own readers, then readers registered by
plugins (``register_source_readers``), then the generic readers here (JSONL, CSV, TXT, JSON
array, hub id). A source that is neither an existing path nor a hub id is an error.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

from cachetune.core.types import QueryRecord, SourceReader
from cachetune.core.errors import CachetuneError
from cachetune.core.jsonl import iter_jsonl
from cachetune.core.textfiles import iter_csv, read_json, reading_text

QUERY_FIELDS = ("query", "question", "intent", "text", "Question")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?$")


def looks_like_hub_id(source: str) -> bool:
    """``org/name`` or ``org/name:config`` that is not a local path."""
    return bool(_HUB_ID.match(source)) and not Path(source.split(":")[0]).exists()


def split_hub_id(source: str):
    """``org/name:config`` -> (``org/name``, ``config`` or None)."""
    name, _, config = source.partition(":")
    return name, (config or None)


def pick_query_field(row: dict, wanted: Optional[str], where: str, line: Optional[int] = None) -> str:
    if wanted:
        if wanted not in row:
            raise CachetuneError(f"no '{wanted}' field (fields: {', '.join(map(str, row))})", where, line)
        return wanted
    for name in QUERY_FIELDS:
        if name in row:
            return name
    raise CachetuneError(
        f"no query field: expected one of {', '.join(QUERY_FIELDS)} or --query-field "
        f"(fields: {', '.join(map(str, row))})",
        where,
        line,
    )


def read_jsonl_queries(source: str, options: dict) -> Iterator[QueryRecord]:
    field = options.get("query_field")
    for number, row in iter_jsonl(source):
        name = pick_query_field(row, field, source, number)
        field = name  # one field for the whole file
        meta = {k: v for k, v in row.items() if k != name and isinstance(v, (str, int, float, bool))}
        yield QueryRecord(row.get(name), f"{source}:{number}", meta)


def read_csv_queries(source: str, options: dict) -> Iterator[QueryRecord]:
    records = iter_csv(source)
    _, header = next(records, (None, None))
    if header is None:
        raise CachetuneError("empty CSV file (no header)", source)
    column = header.index(pick_query_field(dict.fromkeys(header), options.get("query_field"), source, 1))
    for line, cells in records:
        if len(cells) > len(header):
            raise CachetuneError(f"{len(cells)} cells, but the header has {len(header)} columns", source, line)
        yield QueryRecord(cells[column] if column < len(cells) else None, f"{source}:{line}", {})


def read_txt_queries(source: str, options: dict) -> Iterator[QueryRecord]:
    path = Path(source)
    if not path.exists():
        raise CachetuneError("file not found", source)
    with reading_text(path), open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if line.startswith("#"):
                continue  # comment lines in hand-written query lists
            yield QueryRecord(line.rstrip("\n"), f"{source}:{number}", {})


def read_json_array_queries(source: str, options: dict) -> Iterator[QueryRecord]:
    data = load_json_file(source)
    if not isinstance(data, list):
        raise CachetuneError("expected a JSON array of queries or objects", source)
    field = options.get("query_field")
    for index, item in enumerate(data):
        where = f"{source}[{index}]"
        if isinstance(item, str):
            yield QueryRecord(item, where, {})
        elif isinstance(item, dict):
            name = pick_query_field(item, field, where)
            yield QueryRecord(item.get(name), where, {})
        else:
            raise CachetuneError(f"item {index} is a {type(item).__name__}, not a string or object", source)


def load_json_file(source: str):
    if not Path(source).exists():
        raise CachetuneError("file not found", source)
    return read_json(source)


def load_hub_dataset(source: str, split: str = "train"):
    """Load a dataset from the hub with ``datasets``; one clear error when it cannot."""
    name, config = split_hub_id(source)
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a dependency
        raise CachetuneError(f"loading '{source}' needs the 'datasets' package: {exc}") from None
    try:
        return datasets.load_dataset(name, config, split=split)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CachetuneError(f"could not load dataset '{source}' from the hub: {first}") from None


def read_hub_queries(source: str, options: dict) -> Iterator[QueryRecord]:
    dataset = load_hub_dataset(source, options.get("split", "train"))
    columns = {c: None for c in dataset.column_names}
    name = pick_query_field(columns, options.get("query_field"), source)
    for index, row in enumerate(dataset):
        yield QueryRecord(row.get(name), f"{source}#{index}", {})


def _suffix(source: str) -> str:
    return Path(source).suffix.lower()


GENERIC_READERS: List[SourceReader] = [
    SourceReader("jsonl", lambda s: _suffix(s) in (".jsonl", ".ndjson"), read_jsonl_queries, "JSON Lines with a query field"),
    SourceReader("csv", lambda s: _suffix(s) in (".csv", ".tsv"), read_csv_queries, "CSV/TSV with a header and a query column"),
    SourceReader("txt", lambda s: _suffix(s) == ".txt", read_txt_queries, "one query per line"),
    SourceReader("json", lambda s: _suffix(s) == ".json", read_json_array_queries, "JSON array of strings or objects"),
    SourceReader("hub", looks_like_hub_id, read_hub_queries, "dataset hub id org/name[:config]"),
]


def resolve_reader(source: str, readers: Sequence[SourceReader]) -> SourceReader:
    """The first reader whose ``detect`` accepts ``source``."""
    for reader in readers:
        if reader.detect(source):
            return reader
    if not Path(source).exists():
        raise CachetuneError("source not found (not a file, folder or dataset hub id)", source)
    raise CachetuneError(
        "unknown source format (expected .jsonl, .csv, .tsv, .txt, .json, a folder the domain understands, "
        "or a hub id)",
        source,
    )
