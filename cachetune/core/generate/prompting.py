"""What every generator backend shares: the Generator protocol, prompts, parsing, validation.

Backends (llama-cpp, openai, vllm, transformers) only turn chat conversations into text;
everything else -- the few-shot chat built from a domain's :class:`PromptTemplates`, the
tolerant JSON parsing and the rules that reject junk -- lives here, so the vLLM backend that
cannot run on a CPU machine shares its whole code path with the backends the tests run.

The few-shot chat is built so that the paraphrase and the hard-negative request for every
query share one long prefix (system text plus every worked example of both kinds); only the
last user turn differs. Engines with prefix caching (llama.cpp's KV reuse, vLLM's automatic
prefix caching, llama.cpp server) then evaluate the examples once instead of per request.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, List, Optional, Pattern, Protocol, Sequence, Tuple, runtime_checkable

from cachetune.core.types import PromptTemplates
from cachetune.core.text import exact_key, near_key, normalize_query, tokens

PARAPHRASES = "paraphrases"
NEGATIVES = "negatives"
KINDS = (PARAPHRASES, NEGATIVES)
# Rejection reasons are counted as "<kind>/<reason>"; the kind prefix uses the singular.
KIND_LABEL = {PARAPHRASES: "paraphrase", NEGATIVES: "negative"}

Conversation = List[Dict[str, str]]


@dataclass
class GenerationResult:
    """One completion: its text (``None`` when the request failed) and token counts."""

    text: Optional[str]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: Optional[str] = None


@dataclass(frozen=True)
class Request:
    """One chat request: the conversation, its seed, and what it asks for (``n`` items of
    ``kind``), which backends that constrain decoding turn into :func:`response_schema`."""

    conversation: Conversation
    seed: int
    kind: str
    n: int

    @property
    def schema(self) -> dict:
        return response_schema(self.kind, self.n)


@runtime_checkable
class Generator(Protocol):
    """What a backend factory returns.

    ``label`` is recorded in every triplet as ``generator`` (``"<backend>:<model>"``).
    ``generate`` answers a batch of :class:`Request` in order, one result per request; each
    request carries its own seed so a rerun (or a resume) asks the same thing the same way,
    whatever the batch it falls in. Sampling settings (temperature, max tokens) come from the
    factory's options. A failure that would fail every request (server gone, model missing) raises
    :class:`cachetune.core.errors.CachetuneError`; a failure of one request is returned as a
    result with ``error`` set and is counted, not raised.

    An optional ``batch_size`` attribute says how many queries per ``generate`` call suit the
    engine when ``--batch-size`` is not given: large for vLLM, 1 where batching gains nothing
    (a smaller batch loses less work to a crash).

    An optional ``generate_each(requests)`` yields ``(index, result)`` for each request as it is
    answered, in any order: a backend whose requests finish one by one (HTTP) has each query's
    triplets written as soon as its replies are in, so a kill mid-batch loses only the queries
    still in flight.

    An optional ``generate_fed(feed)`` does the same for the requests of a
    :class:`cachetune.core.generate.feed.RequestFeed`,
    which the caller may add to while the backend runs (a query's second request, sent once its
    first reply is checked): the backend takes each request when it has room for one, until the
    feed is closed and every request in it is answered.
    """

    label: str

    def generate(self, requests: Sequence[Request]) -> List[GenerationResult]:
        ...

    def close(self) -> None:
        ...


def response_schema(kind: str, n: int) -> dict:
    """JSON schema of the reply: ``{"<kind>": [n strings]}``, for engines that constrain decoding."""
    return {
        "type": "object",
        "properties": {kind: {"type": "array", "items": {"type": "string", "minLength": 1},
                              "minItems": n, "maxItems": n}},
        "required": [kind],
    }


# -- prompts -------------------------------------------------------------------------------

FORMAT_HINT = 'Reply with JSON only: {{"{kind}": [{n} strings]}}'


def _instruction(templates: PromptTemplates, kind: str, query: str, n: int) -> str:
    template = templates.paraphrase_instruction if kind == PARAPHRASES else templates.negative_instruction
    return template.format(n=n, query=query) + "\n" + FORMAT_HINT.format(kind=kind, n=n)


def build_conversation(templates: PromptTemplates, kind: str, query: str, n: int) -> Conversation:
    """The few-shot chat that asks for ``n`` items of ``kind`` for ``query``.

    Every example is shown for both kinds, paraphrases then negatives, so the model sees
    the contrast between a rewording and a hard negative of the same question; the prefix up
    to the last user turn is identical for all queries and both kinds (see module docstring).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    messages: Conversation = [{"role": "system", "content": templates.system}]
    for example in templates.examples:
        for example_kind, items in ((PARAPHRASES, example.paraphrases), (NEGATIVES, example.negatives)):
            if not items:
                continue
            messages.append({"role": "user", "content": _instruction(templates, example_kind, example.query,
                                                                      len(items))})
            messages.append({"role": "assistant",
                             "content": json.dumps({example_kind: list(items)}, ensure_ascii=False)})
    messages.append({"role": "user", "content": _instruction(templates, kind, query, n)})
    return messages


def render_plain(conversation: Conversation) -> str:
    """A plain-text rendering for models without a chat template."""
    lines = []
    for message in conversation:
        lines.append(f"{message['role'].capitalize()}: {message['content']}")
    lines.append("Assistant:")
    return "\n\n".join(lines)


# -- parsing ---------------------------------------------------------------------------------

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)(?:```|$)", re.DOTALL)
_JSON_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')


@dataclass
class Parsed:
    """Items parsed from a reply; ``problem`` names why there are none, ``note`` a repair made."""

    items: List[str]
    problem: Optional[str] = None
    note: Optional[str] = None
    dropped: int = 0  # entries that were not text


def _items_from(value, kind: str):
    """The list under ``kind`` (or the only list) in a decoded JSON value, else None."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        if isinstance(value.get(kind), list):
            return value[kind]
        for key, item in value.items():  # "paraphrase", "Paraphrases", "items" ...
            if isinstance(item, list) and key.lower().rstrip("s") == kind.rstrip("s"):
                return item
        lists = [item for item in value.values() if isinstance(item, list)]
        if len(lists) == 1:
            return lists[0]
    return None


def _as_text(entry) -> Optional[str]:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict):  # {"text": "..."} or {"paraphrase": "..."}
        strings = [v for v in entry.values() if isinstance(v, str)]
        if len(strings) == 1:
            return strings[0]
    return None


def parse_reply(text: Optional[str], kind: str) -> Parsed:
    """Items of ``kind`` from an LLM reply, tolerating code fences, prose around the JSON,
    a bare JSON list, other key spellings, and a reply cut off by the token limit (the
    complete strings before the cut are kept and ``note`` says ``truncated``)."""
    if text is None or not text.strip():
        return Parsed([], problem="empty_output")
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder(strict=False)  # small models put raw newlines/tabs inside strings
    for candidate in candidates:
        for match in re.finditer(r"[\[{]", candidate):
            try:
                value, _ = decoder.raw_decode(candidate, match.start())
            except json.JSONDecodeError:
                continue
            raw = _items_from(value, kind)
            if raw is None:
                continue
            items = [_as_text(entry) for entry in raw]
            kept = [item for item in items if item is not None]
            return Parsed(kept, dropped=len(items) - len(kept),
                          problem=None if raw else "empty_list")
    # A reply cut off by max_tokens: keep the complete strings after the opening bracket.
    start = re.search(r'"' + re.escape(kind.rstrip("s")) + r's?"\s*:\s*\[', text, re.IGNORECASE)
    if start is not None:
        strings = []
        for m in _JSON_STRING.finditer(text, start.end()):
            try:
                strings.append(decoder.decode(f'"{m.group(1)}"'))
            except json.JSONDecodeError:  # e.g. a stray backslash escape: skip that string
                continue
        if strings:
            return Parsed(strings, note="truncated")
    return Parsed([], problem="unparseable_output")


# -- validation ------------------------------------------------------------------------------

_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)]|[A-Za-z][.)](?=\s))\s+")
_QUOTES = "\"'\u201c\u201d\u2018\u2019`"
# Openers of an answer, not of a question or request ("You can use sorted()", "Yes, ...").
_ANSWER_OPENER = re.compile(
    r"^(?:(?:yes|no)\b[,.!:]|you (?:can|could|should|need|may|might|must|will)\b|here(?:'s| is| are)\b|"
    r"sure\b|certainly\b|the (?:answer|solution|following)\b|this (?:can|will)\b|it (?:is|depends)\b|"
    r"there (?:is|are)\b|answer\s*:|to do (?:this|that|so)\b|simply\b|just (?:use|call)\b)",
    re.IGNORECASE,
)
# A statement: text ending in "." or "!" (a question ends in "?").
_STATEMENT = re.compile(r"[^.!?]{12,}?[.!](?=\s|$)")
# Words that say nothing about a question's topic: a hard negative must share another one.
_TOPIC_STOPWORDS = frozenset(
    "a an the of to in on for and or with without from by at as is are was were be been being do does did "
    "how what which who whom whose why when where can could should would will i my me you your it its this "
    "that these those there their them get make using use way best possible any some all one".split()
)


@dataclass(frozen=True)
class DomainRules:
    """What a domain adds to the checks (see :class:`cachetune.Domain`): a compiled
    ``answer_pattern`` (an item it matches, unlike the query, is an answer) and extra
    ``filler_words``. The defaults add nothing."""

    answer_pattern: Optional[Pattern] = None
    filler_words: FrozenSet[str] = frozenset()

    @classmethod
    def of(cls, domain) -> "DomainRules":
        pattern = re.compile(domain.answer_pattern) if domain.answer_pattern else None
        return cls(pattern, frozenset(domain.filler_words))


NEUTRAL_RULES = DomainRules()


def clean_item(text: str) -> str:
    """Normalise whitespace and drop list bullets / numbering and wrapping quotes."""
    text = normalize_query(text)
    text = _BULLET.sub("", text, count=1)
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    return text


def looks_like_answer(item: str, query: str, rules: DomainRules = NEUTRAL_RULES) -> bool:
    """Heuristic: ``item`` answers ``query`` instead of asking it.

    An answer opener ("You can ...", "Yes, ...", "Here is ..."), a code block, a match of the
    domain's ``answer_pattern`` (programming: a line of Python) that the query does not match, or
    two or more statements (sentences ending in "." or "!") where the query has fewer.
    """
    if _ANSWER_OPENER.match(item) and not _ANSWER_OPENER.match(query):
        return True
    if "```" in item:
        return True
    pattern = rules.answer_pattern
    if pattern is not None and pattern.search(item) and not pattern.search(query):
        return True
    statements = len(_STATEMENT.findall(item))
    return statements >= 2 and statements > len(_STATEMENT.findall(query))


def topic_words(text: str, filler_words: FrozenSet[str] = frozenset()) -> set:
    return {t for t in tokens(text) if t not in _TOPIC_STOPWORDS and t not in filler_words and len(t) > 1}


def too_long(item: str, query: str) -> bool:
    return len(item) > max(3 * len(query), len(query) + 150)


@dataclass
class Checked:
    """Valid paraphrases and negatives of one query, and what was rejected (reason -> count)."""

    paraphrases: List[str] = field(default_factory=list)
    negatives: List[str] = field(default_factory=list)
    rejected: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)
    request_failed: bool = False  # a backend error, not a reply: the query is worth asking again


class _ItemRules:
    """The rules one item of one query's reply is checked against, whatever the other items."""

    def __init__(self, query: str, kind: str, rules: DomainRules):
        self.query, self.kind, self.rules = query, kind, rules
        self.fillers = rules.filler_words
        self.query_keys = self.keys_of(query)
        self.query_topic = topic_words(query, self.fillers)

    def keys_of(self, text: str) -> set:
        return {exact_key(text), near_key(text, self.fillers)}

    def own_problem(self, item: str, keys: set) -> Optional[str]:
        """The first rule ``item`` breaks that comes before the duplicate rule, else None."""
        if not item or not near_key(item, self.fillers):
            return "empty_item"
        if looks_like_answer(item, self.query, self.rules):
            return "answers_question"
        if too_long(item, self.query):
            return "too_long"
        if keys & self.query_keys:
            return "same_as_query"
        return None

    def off_topic(self, item: str) -> bool:
        return (self.kind == NEGATIVES and bool(self.query_topic)
                and not (topic_words(item, self.fillers) & self.query_topic))


def check_items(query: str, kind: str, parsed: Parsed, limit: int, checked: Checked,
                rules: DomainRules = NEUTRAL_RULES) -> None:
    """Add the valid items of ``parsed`` to ``checked``; count every rejection by reason.

    Rules, in order: empty item; answers the question (:func:`looks_like_answer`); far longer
    than the query; the query itself after normalisation (same case-folded text, or same
    content tokens in the same order, see :mod:`cachetune.core.text`); a duplicate of an earlier
    item of the query; for negatives, a paraphrase of this query, or off topic (no topic word
    shared with the query); items beyond ``limit``. ``rules`` are the domain's additions.
    """
    label = KIND_LABEL[kind]
    if parsed.problem:
        checked.rejected[f"{label}/{parsed.problem}"] += 1
        return
    if parsed.note:
        checked.notes[f"{label}/{parsed.note}"] += 1
    if parsed.dropped:
        checked.rejected[f"{label}/not_text"] += parsed.dropped
    own = _ItemRules(query, kind, rules)
    kept = checked.paraphrases if kind == PARAPHRASES else checked.negatives
    seen = set().union(*(own.keys_of(item) for item in kept))
    paraphrase_keys = set().union(*(own.keys_of(p) for p in checked.paraphrases))
    for raw in parsed.items:
        item = clean_item(raw)
        keys = own.keys_of(item)
        reason = own.own_problem(item, keys)
        if reason is None:
            if keys & seen:
                reason = "duplicate"
            elif kind == NEGATIVES and keys & paraphrase_keys:
                reason = "same_as_paraphrase"
            elif own.off_topic(item):
                reason = "off_topic"
            elif len(kept) >= limit:
                reason = "extra_item"
            else:
                kept.append(item)
                seen |= keys
                continue
        checked.rejected[f"{label}/{reason}"] += 1


def possible_items(query: str, kind: str, parsed: Parsed, rules: DomainRules = NEUTRAL_RULES) -> List[str]:
    """The items of ``parsed`` that pass every rule of :func:`check_items` that looks at one item
    alone (all but duplicate, a paraphrase of the query, and the limit), cleaned.

    :func:`check_items` keeps none of a reply when this returns none, whatever else the query
    got: what lets ``generate`` skip a query's other request (see the pipeline).
    """
    if parsed.problem:
        return []
    own = _ItemRules(query, kind, rules)
    items = [clean_item(raw) for raw in parsed.items]
    return [item for item in items if own.own_problem(item, own.keys_of(item)) is None and not own.off_topic(item)]


def pair_triplets(query: str, paraphrases: Sequence[str], negatives: Sequence[str]) -> List[Tuple[str, str, str]]:
    """The reference layout: each paraphrase is an anchor, the query its positive, and the
    negatives are handed out round-robin (paraphrase ``i`` gets negative ``i % len(negatives)``)."""
    if not negatives:
        return []
    return [(p, query, negatives[i % len(negatives)]) for i, p in enumerate(paraphrases)]
