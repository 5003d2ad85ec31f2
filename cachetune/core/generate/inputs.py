"""The input of ``generate``: prepared queries, or anchor/positive pairs that only need negatives."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from cachetune.core.data.prepare import query_id as make_query_id
from cachetune.core.errors import CachetuneError
from cachetune.core.jsonl import iter_jsonl
from cachetune.core.text import normalize_query


@dataclass
class Item:
    """One unit of work: a query (LLM mode) or a query with given anchors (pairs mode)."""

    query_id: str
    query: str
    anchors: List[str] = field(default_factory=list)
    generator: Optional[str] = None


def read_input(path: Path, domain: str) -> Tuple[str, List[Item], int]:
    """``("queries", items, duplicates)`` for prepared queries, ``("pairs", ...)`` for anchor/positive rows."""
    mode: Optional[str] = None
    items: Dict[str, Item] = {}
    duplicates = 0
    for number, row in iter_jsonl(path):
        row_mode = "pairs" if "anchor" in row and "positive" in row else "queries"
        if mode is None:
            mode = row_mode
        elif row_mode != mode:
            raise CachetuneError(f"mixes {mode} rows and {row_mode} rows; use one kind per file", path, number)
        if row.get("domain") not in (None, domain):
            raise CachetuneError(f"row is for domain '{row['domain']}' but --domain is '{domain}'", path, number)
        text_field = "positive" if mode == "pairs" else "query"
        query = row.get(text_field)
        if not isinstance(query, str) or not normalize_query(query):
            raise CachetuneError(f"missing or empty '{text_field}' (a non-empty string)", path, number)
        query = normalize_query(query)
        qid = row.get("query_id" if mode == "pairs" else "id") or make_query_id(domain, query)
        if not isinstance(qid, str):
            raise CachetuneError(f"'id' must be a string, got {type(qid).__name__}", path, number)
        if mode == "pairs":
            anchor = row.get("anchor")
            if not isinstance(anchor, str) or not normalize_query(anchor):
                raise CachetuneError("missing or empty 'anchor' (a non-empty string)", path, number)
            item = items.setdefault(qid, Item(qid, query, generator=row.get("generator")))
            if normalize_query(anchor) in item.anchors:
                duplicates += 1
            else:
                item.anchors.append(normalize_query(anchor))
        elif qid in items:
            duplicates += 1
        else:
            items[qid] = Item(qid, query)
    if mode is None:
        raise CachetuneError("no queries in the input", path)
    return mode, list(items.values()), duplicates
