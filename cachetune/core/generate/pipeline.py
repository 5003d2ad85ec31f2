"""Stage 2: turn prepared queries into training triplets with an LLM (and/or mined negatives).

Reads ``train.jsonl`` from ``prepare``; per query, one LLM call asks for N paraphrases and one
for M hard negatives (the reference recipe), the replies are parsed and validated
(:mod:`cachetune.core.generate.prompting`), optionally filtered with the base embedding model, and
paired in the reference layout: every paraphrase is an ``anchor`` with the original query as
``positive`` and the negatives handed out round-robin. ``--mine-negatives K`` adds K mined
negatives per anchor (:mod:`cachetune.core.mining`), or replaces the LLM's with ``--negatives 0``;
an input of ``{"anchor", "positive"}`` pairs gets mined negatives with no LLM at all.

Reliability: the triplets of a query are appended with one ``write`` call as soon as its replies
are in (backends with ``generate_each``, such as openai) or its batch is answered (the others),
so a crash loses at most the queries in flight. A rerun resumes: it skips query ids
already in the output, after dropping a torn last line (and, to be safe, the rest of that last
query's lines, which are then generated again). The output is locked while a run writes it.
The summary ``<output>.stats.json`` is rewritten after every batch and at the end, also after
Ctrl-C.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

from cachetune.core.errors import CachetuneError
from cachetune.core.generate.prompting import (
    NEGATIVES, NEUTRAL_RULES, PARAPHRASES, Checked, DomainRules, GenerationResult, Generator, Request,
    build_conversation, check_items, pair_triplets, parse_reply, possible_items,
)
from cachetune.core.generate.feed import RequestFeed, answers
from cachetune.core.generate.embedding import EmbeddingFilter, mine_batch, mine_where_no_negative
from cachetune.core.generate.inputs import Item, read_input
from cachetune.core.generate.triplets_file import TripletWriter, keep_rows_of, scan_output
from cachetune.core.outputs import check_output
from cachetune.core.jsonl import write_json

# Embedding filter defaults (cosine similarity to the query with the base model) for domains
# whose PromptTemplates set none; the built-in domains set their own (see their PROMPTS).
DEFAULT_PARAPHRASE_FLOOR = 0.6
DEFAULT_NEGATIVE_CEILING = 0.9
DEFAULT_BATCH_SIZE = 32
MAX_IDS_IN_STATS = 200


@dataclass
class GenerateConfig:
    """What ``cachetune generate`` was asked to do (see the command's help for each)."""

    domain: str
    input: Path
    output: Path
    paraphrases: int = 3
    negatives: int = 2
    batch_size: Optional[int] = None  # None: the backend's ``batch_size``, else 32
    limit: Optional[int] = None
    seed: int = 0
    resume: bool = True
    mine_negatives: int = 0
    # Mine one negative per paraphrase for the queries whose LLM negatives were all rejected.
    mine_fallback: bool = False
    mining_margin: float = 0.05
    base_model: Optional[str] = None
    embedding_filter: bool = True
    paraphrase_floor: Optional[float] = None  # None: the domain's (PromptTemplates), else the default
    negative_ceiling: Optional[float] = None
    # Send a query's two requests at once, not one after the other (see _Asker).
    ask_together: bool = False

    def check(self) -> None:
        for name in ("paraphrases", "negatives", "mine_negatives"):
            if getattr(self, name) < 0:
                raise CachetuneError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.batch_size is not None and self.batch_size < 1:
            raise CachetuneError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise CachetuneError(f"--limit must be positive, got {self.limit}")
        if not 0.0 <= self.mining_margin < 1.0:
            raise CachetuneError(f"--mining-margin must be in [0, 1), got {self.mining_margin}")
        for name in ("paraphrase_floor", "negative_ceiling"):
            value = getattr(self, name)
            if value is not None and not -1.0 <= value <= 1.0:
                raise CachetuneError(f"--{name.replace('_', '-')} is a cosine similarity in [-1, 1], got {value}")
        if Path(self.output).resolve() == Path(self.input).resolve():
            raise CachetuneError("--output must not be the input file", self.output)
        # appended to (resume) or started over (--no-resume): both asked for, so no --overwrite
        check_output(self.output, "--output", overwrite=True)


def made_by(config: GenerateConfig, templates, generator_options: Optional[dict]) -> dict:
    """What makes a query's rows: the options that change them, the prompts, the generator."""
    # ask_together changes which requests are sent, not the rows: a request skipped could not have
    # given a triplet (_Asker), so rows made either way may be mixed.
    fields = {k: v for k, v in vars(config).items()
              if k not in ("input", "output", "limit", "resume", "batch_size", "ask_together")}
    prompts = hashlib.sha256(repr(templates).encode("utf-8")).hexdigest()[:16]
    # Hashed, not stored: backend options may hold an API key.
    generator = hashlib.sha256(json.dumps(generator_options or {}, sort_keys=True, default=str).encode()).hexdigest()
    return json.loads(json.dumps({"config": fields, "prompts": prompts, "generator": generator[:16]},
                                 sort_keys=True, default=str))


def stats_path(output: Path) -> Path:
    return Path(output).with_name(Path(output).name + ".stats.json")


def request_seed(seed: int, query_id: str, kind: str) -> int:
    """A per-request seed that does not depend on batching or resuming."""
    digest = hashlib.sha1(f"{seed}:{query_id}:{kind}".encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


# -- the run ------------------------------------------------------------------------------------

@dataclass
class RunStats:
    queries_total: int = 0
    queries_skipped_done: int = 0
    queries_done: int = 0
    queries_without_triplets: int = 0
    without_triplets_ids: List[str] = field(default_factory=list)
    triplets_written: int = 0
    triplets_llm_negative: int = 0
    triplets_mined_negative: int = 0
    requests: int = 0
    requests_skipped: int = 0
    rejected: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0


def _triplet(item: Item, anchor: str, negative: str, domain: str, source: str, generator: str) -> dict:
    return {"anchor": anchor, "positive": item.query, "negative": negative, "query_id": item.query_id,
            "domain": domain, "negative_source": source, "generator": generator}


def generate_triplets(
    config: GenerateConfig,
    templates,
    make_generator: Optional[Callable[[], Generator]],
    *,
    load_model: Optional[Callable[[str], object]] = None,
    default_base_model: Optional[str] = None,
    rules: DomainRules = NEUTRAL_RULES,
    progress: Optional[Callable[[int], object]] = None,
    log: Callable[[str], None] = lambda message: None,
    generator_options: Optional[dict] = None,
) -> dict:
    """Run the generate stage; returns the summary also written to ``<output>.stats.json``.

    :param generator_options: what the backend was built with (name, model, temperature, its
        options): with the prompts and this config it decides which rows a resume may keep.
    :param templates: the domain's :class:`PromptTemplates`.
    :param make_generator: builds the backend (called only if there is LLM work left).
    :param rules: the domain's additions to the reply checks (``DomainRules.of(domain)``).
    :param load_model: loads the base model (a SentenceTransformer) for the embedding filter
        and mining; defaults to :func:`cachetune.core.models.load_sentence_transformer`.
    :param progress: ``progress(total)`` returns a tqdm-like object (``update``, ``close``).
    """
    started = time.time()
    config.check()
    output = Path(config.output)
    mode, items, duplicate_inputs = read_input(Path(config.input), config.domain)
    corpus = [item.query for item in items]
    if config.limit is not None:
        items = items[: config.limit]
    if mode == "pairs" and config.mine_negatives < 1:
        raise CachetuneError("holds anchor/positive pairs: pass --mine-negatives K to give them mined negatives",
                             config.input)
    if mode == "queries" and config.paraphrases < 1:
        raise CachetuneError("--paraphrases must be >= 1 for prepared queries (the paraphrases are the anchors)")
    if mode == "queries" and config.negatives < 1 and config.mine_negatives < 1:
        raise CachetuneError("--negatives 0 needs --mine-negatives K: every triplet needs a negative")

    config = dataclasses.replace(
        config,
        paraphrase_floor=_first(config.paraphrase_floor, getattr(templates, "paraphrase_floor", None),
                                DEFAULT_PARAPHRASE_FLOOR),
        negative_ceiling=_first(config.negative_ceiling, getattr(templates, "negative_ceiling", None),
                                DEFAULT_NEGATIVE_CEILING))
    previous = _previous_runs(output) if config.resume else []
    # Lock first: the repair below must not cut the line another run is writing.
    writer = TripletWriter(output)
    try:
        run = _Run(config, mode, items, started, previous, rules)
        run.summary_base["duplicate_input_rows"] = duplicate_inputs
        if config.resume:
            keep_rows_of(output, made_by(config, templates, generator_options), {i.query_id for i in items}, log)
            done, run.summary_base["resumed_from_lines"], dropped = scan_output(output, config.domain)
            run.summary_base["dropped_torn_lines"] = dropped
            if dropped:
                log(f"dropped {dropped} line(s) at the end of {output} left by an interrupted run")
        else:
            done = set()
            writer.truncate()
        todo = [item for item in items if item.query_id not in done]
        run.stats.queries_skipped_done = len(items) - len(todo)
        if todo:
            run.execute(todo, writer, templates, make_generator, corpus, load_model, default_base_model, progress, log)
    finally:
        writer.close()
    result = run.summary()
    write_json(stats_path(output), result)
    return result


class _Run:
    """One invocation: its counters, its summary, and the batch loop."""

    def __init__(self, config: GenerateConfig, mode: str, items: List[Item], started: float, previous: list,
                 rules: DomainRules):
        self.config, self.mode, self.started, self.previous, self.rules = config, mode, started, previous, rules
        self.stats = RunStats(queries_total=len(items))
        self.generator_label = "none"
        self.interrupted = False
        self.summary_base = {
            "output": str(config.output), "domain": config.domain, "input": str(config.input), "mode": mode,
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(config).items()},
            "resumed_from_lines": 0, "dropped_torn_lines": 0,
        }

    def summary(self) -> dict:
        stats, wall = self.stats, time.time() - self.started
        run = {
            "finished": not self.interrupted, "interrupted": self.interrupted, "generator": self.generator_label,
            "queries_total": stats.queries_total, "queries_skipped_done": stats.queries_skipped_done,
            "queries_done": stats.queries_done, "queries_without_triplets": stats.queries_without_triplets,
            "queries_without_triplets_ids": stats.without_triplets_ids[:MAX_IDS_IN_STATS],
            "triplets_written": stats.triplets_written,
            "triplets_by_negative_source": {"llm": stats.triplets_llm_negative, "mined": stats.triplets_mined_negative},
            "triplets_per_query": round(stats.triplets_written / stats.queries_done, 3) if stats.queries_done else 0.0,
            "llm_requests": stats.requests, "llm_requests_skipped": stats.requests_skipped,
            "rejected": dict(sorted(stats.rejected.items())), "rejected_total": sum(stats.rejected.values()),
            "repaired": dict(sorted(stats.notes.items())),
            "tokens": {"prompt": stats.prompt_tokens, "completion": stats.completion_tokens},
            "wall_time_s": round(wall, 3),
            "queries_per_s": round(stats.queries_done / wall, 4) if wall > 0 else 0.0,
        }
        return {**self.summary_base, **run, "previous_runs": self.previous}

    def execute(self, todo, writer, templates, make_generator, corpus, load_model, default_base_model, progress, log):
        config, use_llm = self.config, self.mode == "queries"
        # The backend first: a missing model or server should fail before the base model loads.
        generator = make_generator() if use_llm else None
        bar = None
        try:
            if generator is not None:
                self.generator_label = generator.label
            model = None
            fallback = use_llm and config.mine_fallback and config.mine_negatives == 0
            if config.mine_negatives > 0 or fallback or (use_llm and config.embedding_filter):
                if load_model is None:
                    from cachetune.core.models import load_sentence_transformer as load_model  # noqa: N813
                model = load_model(config.base_model or default_base_model)
            miner = None
            if config.mine_negatives > 0 or fallback:
                from cachetune.core.mining import HardNegativeMiner

                log(f"embedding {len(corpus)} corpus queries for mining")
                miner = HardNegativeMiner(model, corpus, relative_margin=config.mining_margin)
            embedding_filter = (EmbeddingFilter(model, config.paraphrase_floor, config.negative_ceiling)
                                if use_llm and config.embedding_filter else None)
            bar = progress(len(todo)) if progress is not None else None
            size = config.batch_size or getattr(generator, "batch_size", None) or DEFAULT_BATCH_SIZE
            self.summary_base["batch_size"] = size
            # A backend that answers requests one by one (generate_each) has each query written as
            # soon as its replies are in: a kill mid-batch loses only the queries still in flight.
            streaming = use_llm and (hasattr(generator, "generate_each") or hasattr(generator, "generate_fed"))
            asker = _Asker(generator, templates, config, self.stats, self.rules, embedding_filter) if use_llm else None
            for start in range(0, len(todo), size):
                batch = todo[start: start + size]
                answered = (asker.ask(batch) if asker is not None
                            else ((item, Checked(paraphrases=list(item.anchors))) for item in batch))
                pending = []
                for pair in answered:
                    pending.append(pair)
                    if streaming:
                        self._finish(pending, writer, embedding_filter, miner, fallback, bar)
                        pending = []
                self._finish(pending, writer, embedding_filter, miner, fallback, bar)
                write_json(stats_path(config.output), self.summary())
        except KeyboardInterrupt:
            self.interrupted = True
        finally:
            if bar is not None:
                bar.close()
            if generator is not None:
                generator.close()

    def _finish(self, pairs, writer, embedding_filter, miner, fallback: bool, bar) -> None:
        """Filter, mine and write answered queries (``(item, checked)`` pairs)."""
        if not pairs:
            return
        if embedding_filter is not None:
            embedding_filter.apply(pairs)
        if self.config.mine_negatives > 0:
            mined = mine_batch(miner, pairs, self.config.mine_negatives)
        elif fallback:
            mined = mine_where_no_negative(miner, pairs)
        else:
            mined = [[] for _ in pairs]
        for (item, check), mined_rows in zip(pairs, mined):
            self._write_query(writer, item, check, mined_rows)
            if bar is not None:
                bar.update(1)

    def _write_query(self, writer, item: Item, check: Checked, mined_rows: list) -> None:
        config, stats = self.config, self.stats
        label = self.generator_label if self.mode == "queries" else (
            item.generator or f"input:{Path(config.input).name}")
        rows = [_triplet(item, a, n, config.domain, "llm", label)
                for a, _, n in pair_triplets(item.query, check.paraphrases, check.negatives)]
        stats.triplets_llm_negative += len(rows)
        for anchor, negatives in zip(check.paraphrases, mined_rows):
            rows.extend(_triplet(item, anchor, neg.text, config.domain, "mined", label) for neg in negatives)
            stats.triplets_mined_negative += len(negatives)
        # a query without triplets is recorded so a rerun skips it, unless the backend failed
        writer.write(rows, None if check.request_failed else item.query_id)
        stats.rejected.update(check.rejected)
        stats.notes.update(check.notes)
        stats.queries_done += 1
        stats.triplets_written += len(rows)
        if not rows:
            stats.queries_without_triplets += 1
            stats.without_triplets_ids.append(item.query_id)


class _Asker:
    """Asks the backend for each query's paraphrases and negatives; yields each query with its
    checked replies once they are all in.

    A query gives a triplet only with a valid paraphrase and a valid negative, so its two
    requests go one after the other (unless ``config.ask_together``): first the negatives
    (with a small generator the likelier to leave the query without a triplet: Qwen2.5-0.5B
    gets none valid for about half the CoNaLa queries), and the paraphrases only when that
    reply holds an item that could pass (:func:`possible_items`, then the embedding filter). A
    request skipped so could not have added a triplet, so the rows are those of asking both.
    With mined negatives a query needs only paraphrases: then they go first and decide.
    A backend with ``generate_fed`` gets each second request as soon as the first reply is
    checked, while it still answers the others; any other backend answers them in rounds.
    Both replies are checked together, as when asked at once.
    """

    def __init__(self, generator: Generator, templates, config: GenerateConfig, stats: RunStats,
                 rules: DomainRules, embedding_filter: Optional[EmbeddingFilter]):
        self.generator, self.templates, self.config, self.stats = generator, templates, config, stats
        self.rules, self.embedding_filter = rules, embedding_filter
        self.wanted = [(kind, n) for kind, n in ((PARAPHRASES, config.paraphrases), (NEGATIVES, config.negatives))
                       if n > 0]
        mined = config.mine_negatives > 0 or config.mine_fallback
        if len(self.wanted) == 2 and not config.ask_together:
            first = PARAPHRASES if mined else NEGATIVES
            self.rounds = [[w for w in self.wanted if w[0] == first], [w for w in self.wanted if w[0] != first]]
        else:
            self.rounds = [self.wanted]

    def ask(self, batch: List[Item]) -> Iterator[Tuple[Item, Checked]]:
        """Ask for ``batch``; yield every query once done (in the order their replies complete
        when the backend has ``generate_each`` or ``generate_fed``)."""
        feed, entries = RequestFeed(), []

        def put(item: Item, kinds, got: dict) -> None:
            for kind, n in kinds:
                entries.append((item, kind, got))
                feed.put(Request(build_conversation(self.templates, kind, item.query, n),
                                 request_seed(self.config.seed, item.query_id, kind), kind, n))

        for item in batch:
            put(item, self.rounds[0], {})  # got: kind -> this query's reply
        first_replies_due = len(feed)
        if len(self.rounds) == 1:
            feed.close()
        for index, result in answers(self.generator, feed):
            self.stats.requests += 1
            item, kind, got = entries[index]
            got[kind] = result
            if len(self.rounds) > 1 and len(got) == 1:  # the first of two replies
                first_replies_due -= 1
                promising = result.error is None and self._promising(item, kind, result)
                if promising:
                    put(item, self.rounds[1], got)
                elif result.error is None:
                    self.stats.requests_skipped += 1
                if not first_replies_due:
                    feed.close()
                if promising:
                    continue
            elif len(got) < len(self.wanted):  # asked together: the other reply is still to come
                continue
            present = [(k, m) for k, m in self.wanted if k in got]
            yield item, _check_replies(item, [got[k] for k, _ in present], present, self.stats, self.rules)

    def _promising(self, item: Item, kind: str, result: GenerationResult) -> bool:
        """Whether the reply holds an item that could pass every check (then the other request is sent)."""
        items = possible_items(item.query, kind, parse_reply(result.text, kind), self.rules)
        if not items or self.embedding_filter is None:
            return bool(items)
        return self.embedding_filter.any_kept(item.query, kind, items)


def _check_replies(item: Item, results: List[GenerationResult], wanted, stats: RunStats,
                   rules: DomainRules) -> Checked:
    checked = Checked()
    for result, (kind, n) in zip(results, wanted):
        stats.prompt_tokens += result.prompt_tokens or 0
        stats.completion_tokens += result.completion_tokens or 0
        if result.error:
            checked.rejected[f"{'paraphrase' if kind == PARAPHRASES else 'negative'}/request_failed"] += 1
            checked.request_failed = True
            continue
        check_items(item.query, kind, parse_reply(result.text, kind), n, checked, rules)
    return checked


def _first(*values):
    return next(v for v in values if v is not None)


def _previous_runs(output: Path) -> list:
    """Earlier runs' summaries (without their own history) from an existing stats file."""
    path = stats_path(output)
    if not output.exists() or not path.exists():
        return []
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return []
    runs = list(old.get("previous_runs", []))
    runs.append({k: v for k, v in old.items() if k not in ("previous_runs", "config")})
    return runs
