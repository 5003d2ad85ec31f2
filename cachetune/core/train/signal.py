"""The training file: every source of training signal of a domain, combined into one triplet file.

Sources, each counted in the file's ``.sources.json`` and in the adapter card:

- LLM triplets (``generate``'s output), copied as they are (``source: "llm"``);
- the domain's training sets (``Domain.training_sets`` and ``register_training_sets``): labelled
  pairs such as CoNaLa's two wordings of one question or RQE's entailed question pairs (human), or
  a shipped LLM generation (a set with a ``generator``: its negatives are ``negative_source:
  "llm"``, checked for inversion like generated triplets');
- a user's labelled pairs (``--pairs FILE``, JSONL or CSV ``sentence1,sentence2,label[,group]``).

A label-1 pair ``(s1, s2)`` becomes the triplet anchor = ``s1`` (the incoming query), positive =
``s2`` (the cached wording); its negative is a label-0 partner of ``s1`` from the same source
when there is one (``negative_source: "human"``, handed out round-robin), else one mined from
the domain's query pool (every source's ``sentence2`` texts and the prepared training queries,
less any evaluated text)
with the base model: the most similar candidate scoring at most ``positive * (1 -
relative_margin)`` against the anchor (:class:`cachetune.core.mining.HardNegativeMiner`, the
rule of sentence-transformers' ``mine_hard_negatives(..., relative_margin=...)``), never a
text of the anchor's own group or another positive of the anchor (``negative_source: "mined"``).

Pairs that share a text (by the prepare rule, :func:`cachetune.core.text.near_key` with the
domain's filler words) or a group (a CoNaLa ``question_id``) with any of the domain's evaluation
pairs, or a text with a held-out query of the prepared folder, are dropped and counted, so
nothing evaluated is trained on whatever a training set ships.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from cachetune.core.errors import CachetuneError
from cachetune.core.jsonl import iter_jsonl, write_json, write_jsonl
from cachetune.core.text import exact_key, near_key
from cachetune.core.types import Domain, EvaluationContext, TrainingContext, TrainingSet

LLM_SOURCE = "llm"
# Candidates mined per anchor beyond the one kept, for the exclusions by group and positive.
SPARE_CANDIDATES = 8


def sources_file(output: Path) -> Path:
    """Where the per-source counts of a training file are written."""
    return Path(output).with_name(Path(output).name + ".sources.json")


def training_sources(path) -> dict:
    """``{"assembled": counts}`` from the ``.sources.json`` beside a training file, else ``{}`` (for the card)."""
    import json

    summary = sources_file(Path(path))
    if not summary.exists():
        return {}
    try:
        return {"assembled": json.loads(summary.read_text(encoding="utf-8"))}
    except (OSError, json.JSONDecodeError):
        return {}


def select_training_sets(available: Sequence[TrainingSet], names) -> List[TrainingSet]:
    """``names`` is ``"all"``, ``"none"`` or names (a list or a comma-separated string)."""
    if names in (None, "all"):
        return list(available)
    if names in ("none", "", ()):
        return []
    wanted = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    known = {s.name: s for s in available}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise CachetuneError(f"--training-sets: unknown training set '{unknown[0]}' "
                             f"(this domain has: {', '.join(known) or 'none'})")
    return [known[n] for n in wanted]


def _evaluation_guard(domain: Domain, evaluation_sets, data_dir, log) -> Tuple[set, set]:
    """Near keys of every text, and every group (``meta.question_id``), of the domain's evaluation
    pairs as ``evaluate`` would load them for this prepared folder."""
    keys, groups = set(), set()
    prepared = Path(data_dir) if data_dir and Path(data_dir).is_dir() else None  # a bare triplets run has none
    context = EvaluationContext(domain=domain.name, holdout=prepared)
    for eval_set in evaluation_sets:
        rows = eval_set.load(context) or []
        for row in rows:
            for field in ("sentence1", "sentence2", "anchor", "positive", "negative"):
                if isinstance(row.get(field), str):
                    keys.add(near_key(row[field], domain.filler_words))
            meta = row.get("meta") or {}
            groups.update(str(meta[k]) for k in ("question_id", "negative_question_id") if meta.get(k) is not None)
        log(f"training pairs are kept apart from evaluation set '{eval_set.name}' ({len(rows)} pairs)")
    return keys, groups


def _prepared_queries(data_dir: Optional[Path], split: str) -> List[str]:
    path = Path(data_dir) / f"{split}.jsonl" if data_dir else None
    if path is None or not path.exists():
        return []
    return [row["query"] for _, row in iter_jsonl(path) if isinstance(row.get("query"), str)]


def _load_sources(domain: Domain, sets: Sequence[TrainingSet], set_sources: Dict[str, str],
                  default_source: Optional[str], pairs: Sequence[Path], data_dir, seed: int, log):
    from cachetune.core.evaluate.inputs import read_pairs

    unknown = sorted(set(set_sources) - {s.name for s in sets})
    if unknown:
        raise CachetuneError(f"--training-source: no training set '{unknown[0]}' is used "
                             f"(used: {', '.join(s.name for s in sets) or 'none'})")
    loaded: List[Tuple[str, List[dict]]] = []
    for training_set in sets:
        explicit = training_set.name in set_sources
        source = set_sources.get(training_set.name) or default_source
        context = TrainingContext(domain=domain.name, source=str(source) if source else None, explicit=explicit,
                                  data_dir=Path(data_dir) if data_dir else None, seed=seed)
        rows = training_set.load(context)
        if rows is None:
            log(f"training set '{training_set.name}': no data available, skipped")
            continue
        loaded.append((training_set.name, list(rows)))
    for path in pairs:
        loaded.append((f"pairs:{Path(path).name}", read_pairs(path, both_labels=False)))
    return loaded


def _clean(rows: List[dict], blocked_keys: Dict[str, set], blocked_groups: set, filler) -> Tuple[List[dict], dict]:
    """The rows that may train, and counts of the others by reason (``blocked_keys``: near keys
    of the evaluation texts and of the held-out queries)."""
    dropped = {"same_text": 0, "overlaps_evaluation": 0, "held_out": 0}
    kept = []
    for row in rows:
        s1, s2 = row["sentence1"], row["sentence2"]
        if exact_key(s1) == exact_key(s2):
            dropped["same_text"] += 1
            continue
        group = row.get("group")
        keys = {near_key(s1, filler), near_key(s2, filler)}
        if (group is not None and str(group) in blocked_groups) or keys & blocked_keys["evaluation"]:
            dropped["overlaps_evaluation"] += 1
            continue
        if keys & blocked_keys["held_out"]:
            dropped["held_out"] += 1
            continue
        kept.append(row)
    return kept, dropped


class NegativeExclusions:
    """What a mined negative may not be, from (anchor, positive, group) triples: another positive
    of its anchor, or a text of the anchor's group (a CoNaLa question's other wordings)."""

    def __init__(self, pairs):
        self.positives_of: Dict[str, set] = {}
        self.groups_of: Dict[str, set] = {}
        for anchor, positive, group in pairs:
            self.positives_of.setdefault(exact_key(anchor), set()).add(exact_key(positive))
            if group is not None:
                for text in (anchor, positive):
                    self.groups_of.setdefault(exact_key(text), set()).add(str(group))

    def pick(self, anchor: str, group, candidates) -> Optional[str]:
        """The first candidate (most similar first) that is allowed, or None."""
        for candidate in candidates:
            key = exact_key(candidate.text)
            if key in self.positives_of.get(exact_key(anchor), ()) or \
                    (group is not None and str(group) in self.groups_of.get(key, ())):
                continue
            return candidate.text
        return None


def _pair_triplets(domain: Domain, sources: List[Tuple[str, List[dict]]], pool: List[str], model,
                   relative_margin: float, seed: int,
                   generators: Optional[Dict[str, str]] = None) -> Dict[str, List[dict]]:
    """Triplet rows per source from clean pair rows (see the module docstring); ``generators``:
    the sources a model wrote, by name (their given negatives are ``"llm"``, not ``"human"``)."""
    from cachetune.core.mining import HardNegativeMiner

    generators = generators or {}

    jobs = []  # (source name, anchor, positive, group, human negatives)
    for name, rows in sources:
        partners: Dict[str, List[str]] = {}
        for row in rows:
            if row["label"] == 0:
                partners.setdefault(exact_key(row["sentence1"]), []).append(row["sentence2"])
        for row in rows:
            if row["label"] == 1:
                jobs.append((name, row["sentence1"], row["sentence2"], row.get("group"),
                             partners.get(exact_key(row["sentence1"]), [])))
    exclusions = NegativeExclusions((anchor, positive, group) for _, anchor, positive, group, _ in jobs)
    to_mine = [j for j in jobs if not j[4]]
    mined: Dict[Tuple[str, str], Optional[str]] = {}
    if to_mine:
        miner = HardNegativeMiner(model, pool, relative_margin=relative_margin)
        found = miner.mine([j[1] for j in to_mine], [j[2] for j in to_mine], k=1 + SPARE_CANDIDATES)
        for (_, anchor, positive, group, _), candidates in zip(to_mine, found):
            mined[(anchor, positive)] = exclusions.pick(anchor, group, candidates)
    rng = random.Random(seed)
    turn: Dict[str, int] = {}
    out: Dict[str, List[dict]] = {name: [] for name, _ in sources}
    for name, anchor, positive, group, human in jobs:
        if human:
            start = turn.setdefault(exact_key(anchor), rng.randrange(len(human)))
            negative, kind = human[start % len(human)], "llm" if name in generators else "human"
            turn[exact_key(anchor)] = start + 1
        else:
            negative, kind = mined.get((anchor, positive)), "mined"
        if negative is None or exact_key(negative) == exact_key(positive):
            continue
        out[name].append({"anchor": anchor, "positive": positive, "negative": negative, "domain": domain.name,
                          "source": name, "negative_source": kind,
                          "generator": generators.get(name, f"human:{name}"),
                          **({"group": str(group)} if group is not None else {})})
    return out


def assemble_training_data(domain: Domain, output: Path, triplets: Sequence[Path] = (),
                           training_sets: Sequence[TrainingSet] = (), set_sources: Optional[Dict[str, str]] = None,
                           default_source: Optional[str] = None, pairs: Sequence[Path] = (),
                           data_dir: Optional[Path] = None, evaluation_sets=(), base_model: Optional[str] = None,
                           relative_margin: float = 0.05, seed: int = 0, model=None,
                           log: Callable[[str], None] = print) -> dict:
    """Write the combined training file ``output``; returns (and writes beside it) the counts per source."""
    if not 0.0 <= relative_margin < 1.0:
        raise CachetuneError(f"--relative-margin must be in [0, 1), got {relative_margin}")
    output = Path(output)
    rows: List[dict] = []
    summary: Dict[str, dict] = {}
    for path in triplets:
        path = Path(path)
        if not path.is_file():
            raise CachetuneError("triplet file not found", path)
        before = len(rows)
        for _, row in iter_jsonl(path):
            rows.append({**row, "source": row.get("source") or LLM_SOURCE})
        summary.setdefault(LLM_SOURCE, {"triplets": 0})["triplets"] += len(rows) - before
    sources = _load_sources(domain, training_sets, set_sources or {}, default_source, pairs, data_dir, seed, log)
    if sources:
        eval_keys, eval_groups = _evaluation_guard(domain, evaluation_sets, data_dir, log)
        blocked = {"evaluation": eval_keys,
                   "held_out": {near_key(q, domain.filler_words) for q in _prepared_queries(data_dir, "holdout")}}
        cleaned = []
        for name, pair_rows in sources:
            kept, dropped = _clean(pair_rows, blocked, eval_groups, domain.filler_words)
            summary[name] = {"pairs": len(pair_rows), "positives": sum(r["label"] == 1 for r in kept),
                             "dropped": dropped}
            cleaned.append((name, kept))
        # An evaluated text is no negative either.
        pool = [t for t in dict.fromkeys([r["sentence2"] for _, kept in cleaned for r in kept]
                                         + _prepared_queries(data_dir, "train"))
                if near_key(t, domain.filler_words) not in eval_keys]
        if model is None:
            from cachetune.core.models import load_sentence_transformer

            model = load_sentence_transformer(base_model)
        generators = {s.name: s.generator for s in training_sets if s.generator}
        for name, made in _pair_triplets(domain, cleaned, pool, model, relative_margin, seed, generators).items():
            summary[name]["triplets"] = len(made)
            # a positive no candidate of the pool qualified for (all above the margin, or its own group)
            summary[name]["dropped"]["no_negative"] = summary[name]["positives"] - len(made)
            given = "llm" if name in generators else "human"  # what its label-0 partners are
            summary[name][f"{given}_negatives"] = sum(r["negative_source"] == given for r in made)
            if name in generators:
                summary[name]["generator"] = generators[name]
            rows.extend(made)
    if not rows:
        raise CachetuneError("no training data: no triplets, no training set with data and no --pairs")
    write_jsonl(output, rows)
    result = {"triplets": len(rows), "relative_margin": relative_margin, "sources": summary}
    write_json(sources_file(output), result)
    for name, counts in summary.items():
        log(f"training source {name}: {counts['triplets']:,} triplets"
            + (f" from {counts['positives']:,} positive pairs ("
               + (f"{counts['llm_negatives']:,} LLM" if "llm_negatives" in counts else
                  f"{counts['human_negatives']:,} human")
               + f" negatives), dropped {counts['dropped']}" if "pairs" in counts else ""))
    return result
