"""Query normalisation and the keys used to find exact and near duplicates.

Rules (documented in the README):
- normalise: Unicode NFC, every run of whitespace to one space, trimmed;
- exact duplicate: same normalised text, compared case-insensitively (``casefold``);
- near duplicate: same *content tokens* -- lower-cased word tokens with punctuation,
  repeats and a few filler words ("how", "do", "i", "a", "the", ..., plus the domain's own
  ``Domain.filler_words``) dropped -- in the same order. "How do I sort a list?" and "sort a list" collapse to one query. Order is kept on
  purpose: a pure token set would merge "convert int to string" with "convert string to
  int", which are opposite questions and exactly the hard negatives a cache must tell apart.
"""

from __future__ import annotations

import re
import unicodedata
from typing import FrozenSet, Optional, Tuple

_WS = re.compile(r"\s+")
_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)
# Words whose presence or absence does not change what a question asks.
# A domain adds its own (``Domain.filler_words``; programming: "python").
FILLER_WORDS = frozenset({"a", "an", "the", "please", "how", "do", "i", "can", "to", "in"})


def normalize_query(text: Optional[str]) -> str:
    """NFC, collapse whitespace, strip. ``None`` becomes ``""``."""
    if text is None:
        return ""
    return _WS.sub(" ", unicodedata.normalize("NFC", str(text))).strip()


def exact_key(text: str) -> str:
    """Key under which two normalised queries are exact duplicates."""
    return normalize_query(text).casefold()


def tokens(text: str) -> list:
    return _TOKEN.findall(normalize_query(text).casefold())


def near_key(text: str, filler_words: FrozenSet[str] = frozenset()) -> Tuple[str, ...]:
    """Key under which two queries are near duplicates (see module docstring); ``filler_words``
    are the domain's, dropped on top of :data:`FILLER_WORDS`."""
    toks = tokens(text)
    content = [t for t in toks if t not in FILLER_WORDS and t not in filler_words] or toks
    seen, key = set(), []
    for tok in content:
        if tok not in seen:
            seen.add(tok)
            key.append(tok)
    return tuple(key)
