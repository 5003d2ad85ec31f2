"""Stage 4: score the base model, and an adapter beside it, on labelled pairs and triplets.

Inputs, in this order: ``--pairs`` files, ``--triplets`` files, the held-out triplets of a
prepared folder (``--holdout``), then the domain's own evaluation sets. All inputs are read
and validated first, so bad input fails before any model loads. Every distinct text is
encoded once per model (normalised embeddings; cosine = dot product), the base first, then
the same model with the adapter attached (the base weights load only once).

Outputs in ``--output``: ``metrics.json``, ``report.md``, ``cache_simulation-<set>.csv`` and
three PNG plots per set. The *primary* pairs set (the first pairs input, else the pairs
derived from the first triplets input) and the primary triplets set fill the top-level
``base`` / ``adapter`` / ``improvement`` keys; every set is under ``sets``.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from cachetune.core.types import Domain, EvaluationContext, EvaluationSet
from cachetune.core.errors import CachetuneError
from cachetune.core.evaluate.report import render_report, write_set_files
from cachetune.core.evaluate.inputs import (
    EvalInput,
    check_held_out_triplets,
    check_pair_labels,
    conflicting_labels,
    read_holdout,
    read_pairs,
    read_triplets,
)
from cachetune.core.evaluate.scoring import count_truncated, headline, improvement, score_sets, texts_of
from cachetune.core.jsonl import atomic_writer, write_json
from cachetune.core.outputs import check_output
from cachetune.core.models import encode

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
Log = Callable[[str], None]


# -- inputs ---------------------------------------------------------------------------
def _unique_name(name: str, taken: set) -> str:
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name}-{n}", n + 1
    taken.add(candidate)
    return candidate


def _validate_set_rows(eval_set: EvaluationSet, rows) -> list:
    where = f"evaluation set '{eval_set.name}'"
    if not isinstance(rows, list):
        raise CachetuneError(f"{where}: load() must return a list of rows or None, got {type(rows).__name__}")
    fields = ("sentence1", "sentence2", "label") if eval_set.kind == "pairs" else ("anchor", "positive", "negative")
    for index, row in enumerate(rows):
        if not isinstance(row, dict) or any(f not in row for f in fields):
            raise CachetuneError(f"{where}: row {index} needs the fields {', '.join(fields)}")
        for f in fields[:2] if eval_set.kind == "pairs" else fields:
            if not isinstance(row[f], str) or not row[f].strip():
                raise CachetuneError(f"{where}: row {index}: '{f}' must be non-empty text")
        if eval_set.kind == "pairs" and row["label"] not in (0, 1):
            raise CachetuneError(f"{where}: row {index}: label must be 0 or 1, got {row['label']!r}")
    if eval_set.kind == "pairs":
        clash = conflicting_labels(rows)
        if clash:
            first, second = clash
            raise CachetuneError(f"{where}: rows {first} and {second} hold the same two texts labelled "
                                 f"{rows[first]['label']} and {rows[second]['label']}: one of the labels is wrong")
        check_pair_labels(rows, where)
    return rows


def gather_inputs(domain: Domain, *, pairs: Sequence = (), triplets: Sequence = (), holdout=None,
                  columns: Optional[Sequence[str]] = None, evaluation_sets: Sequence[EvaluationSet] = (),
                  context: Optional[EvaluationContext] = None, log: Log = lambda m: None
                  ) -> Tuple[List[EvalInput], List[dict]]:
    """Read and validate every input; returns (inputs, skipped sets)."""
    inputs: List[EvalInput] = []
    taken: set = set()
    for path in pairs:
        rows = read_pairs(path, columns)
        inputs.append(EvalInput(_unique_name(f"pairs-{Path(path).stem}", taken), "pairs", rows, str(path),
                                "labelled pairs (--pairs)"))
    for path in triplets:
        rows, notes = read_triplets(path, domain.name)
        if holdout is not None:  # triplets evaluated beside a prepared folder are its held-out ones
            check_held_out_triplets(rows, path, holdout, domain.filler_words)
        inputs.append(EvalInput(_unique_name(f"triplets-{Path(path).stem}", taken), "triplets", rows, str(path),
                                "triplets (--triplets)", notes))
    if holdout is not None:
        held = read_holdout(holdout, domain.name, domain.filler_words)
        if held is not None:
            held.name = _unique_name(held.name, taken)
            inputs.append(held)
    skipped = []
    context = context or EvaluationContext(domain=domain.name, holdout=Path(holdout) if holdout else None)
    for eval_set in evaluation_sets:
        if eval_set.kind not in ("pairs", "triplets"):
            raise CachetuneError(f"evaluation set '{eval_set.name}': kind must be 'pairs' or 'triplets', "
                                 f"got '{eval_set.kind}'")
        log(f"loading evaluation set '{eval_set.name}'")
        try:
            rows = eval_set.load(context)
        except CachetuneError:
            raise
        except Exception as exc:
            raise CachetuneError(f"evaluation set '{eval_set.name}' failed to load: {exc!r}") from exc
        if rows is None:
            skipped.append({"set": eval_set.name, "reason": "its data is not available"})
            continue
        rows = _validate_set_rows(eval_set, rows)
        inputs.append(EvalInput(_unique_name(eval_set.name, taken), eval_set.kind, rows,
                                f"domain '{domain.name}'", eval_set.description, metrics=eval_set.metrics))
    if holdout is not None and not inputs:
        raise CachetuneError("nothing held out to evaluate: no holdout_triplets.jsonl in the folder and the "
                             "domain's evaluation sets found no held-out data", holdout)
    return inputs, skipped


def unique_texts(inputs: Sequence[EvalInput]) -> Dict[str, int]:
    """Every distinct text of every input -> its row in the embedding matrix."""
    index: Dict[str, int] = {}
    for item in inputs:
        for text in texts_of(item):
            if text not in index:
                index[text] = len(index)
    return index


# -- models ---------------------------------------------------------------------------
def check_adapter_folder(adapter) -> Optional[Path]:
    """``adapter`` (a folder, or None) as a Path; anything else is one error naming it."""
    if adapter is None:
        return None
    path = Path(adapter).expanduser()
    if not path.exists():
        raise CachetuneError("adapter folder not found (--adapter)", adapter)
    if not path.is_dir():
        raise CachetuneError("--adapter expects an adapter folder or a registry name, got a file", adapter)
    return path


# -- the stage ------------------------------------------------------------------------
def evaluate(domain: Domain, output, *, pairs: Sequence = (), triplets: Sequence = (), holdout=None,
             columns: Optional[Sequence[str]] = None, evaluation_sets: Sequence[EvaluationSet] = (),
             eval_data: Optional[str] = None, limit: Optional[int] = None, seed: int = 0,
             base_model: Optional[str] = None, adapter=None, adapter_name: Optional[str] = None,
             target_precision: float = 0.95, n_bootstrap: int = 1000, batch_size: int = 64,
             max_seq_length: Optional[int] = None, device: Optional[str] = None, plots: bool = True,
             show_progress: bool = False, log: Log = lambda m: None) -> dict:
    """Run the evaluation and write its outputs; returns the ``metrics.json`` content.

    ``adapter`` is an adapter folder (a registry name is resolved by the caller, see
    :func:`cachetune.registry.resolve_adapter`); ``adapter_name`` is recorded with it.
    """
    started = time.time()
    if not 0.0 < target_precision <= 1.0:
        raise CachetuneError(f"--target-precision must be in (0, 1], got {target_precision}")
    if limit is not None and limit <= 0:
        raise CachetuneError(f"--limit must be positive, got {limit}")
    if batch_size <= 0:
        raise CachetuneError(f"--batch-size must be positive, got {batch_size}")
    if n_bootstrap < 0:
        raise CachetuneError(f"--bootstrap must be >= 0, got {n_bootstrap}")
    output = check_output(output, "--output", folder=True, overwrite=True)

    # Everything that can be wrong with the inputs or the adapter fails here, before encoding.
    adapter_dir = check_adapter_folder(adapter)
    from cachetune.core.models import canonical_model_id, resolve_base_model

    card: dict = {}
    if adapter_dir is not None:
        from cachetune.core.adapters import base_model_entry, check_base_model, read_card

        card = read_card(adapter_dir)
        entry = base_model_entry(adapter_dir, card)
        check_base_model(entry, base_model, adapter_dir)
        base_id = base_model or entry["id"]
    else:
        base_id = base_model or domain.default_base_model
    resolve_base_model(base_id)  # a missing local path fails now
    context = EvaluationContext(domain=domain.name, eval_data=str(eval_data) if eval_data else None,
                                holdout=Path(holdout) if holdout else None, limit=limit, seed=seed)
    inputs, skipped = gather_inputs(domain, pairs=pairs, triplets=triplets, holdout=holdout, columns=columns,
                                    evaluation_sets=evaluation_sets, context=context, log=log)
    for item in skipped:
        log(f"skipped evaluation set '{item['set']}': {item['reason']}")
    if not inputs:
        raise CachetuneError("nothing to evaluate: give --pairs, --triplets or --holdout, or make the domain's "
                             "evaluation data available (--eval-data PATH)")
    index = unique_texts(inputs)
    texts = list(index)
    n_refs = sum(len(texts_of(i)) for i in inputs)
    log(f"{len(inputs)} set(s), {n_refs} texts, {len(texts)} distinct")

    from cachetune.core.models import load_sentence_transformer

    timing: Dict[str, float] = {}
    t0 = time.time()
    model = load_sentence_transformer(base_id, device=device)
    if max_seq_length:
        model.max_seq_length = int(max_seq_length)
    model.eval()
    timing["load_s"] = time.time() - t0
    truncated = count_truncated(model, texts)
    embeddings: Dict[str, np.ndarray] = {}
    t0 = time.time()
    embeddings["base"] = encode(model, texts, batch_size, show_progress)
    timing["encode_base_s"] = time.time() - t0
    if adapter_dir is not None:
        from cachetune.core.adapters import attach_adapter

        t0 = time.time()
        attach_adapter(model, adapter_dir)
        model.eval()
        embeddings["adapter"] = encode(model, texts, batch_size, show_progress)
        timing["encode_adapter_s"] = time.time() - t0

    t0 = time.time()
    models = list(embeddings)
    sets, raws = score_sets(inputs, embeddings, index, truncated, model.max_seq_length, target_precision,
                            n_bootstrap, seed)
    timing["metrics_s"] = time.time() - t0

    primary_pairs = next((n for n, s in sets.items() if s["kind"] == "pairs"), None) or \
        next((n for n, s in sets.items() if "pairs" in s["base"]), None)
    primary_triplets = next((n for n, s in sets.items() if s["kind"] == "triplets"), None)
    result: dict = {
        "cachetune_version": _version(),
        "domain": domain.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "target_precision": target_precision,
        "models": {"base": {"id": canonical_model_id(base_id), "path": resolve_base_model(base_id),
                            "max_seq_length": getattr(model, "max_seq_length", None)}},
        "primary": {"pairs": primary_pairs, "triplets": primary_triplets},
        "skipped": skipped,
    }
    if adapter_dir is not None:
        result["models"]["adapter"] = {"path": str(adapter_dir), "name": adapter_name,
                                       "domain": card.get("domain"), "base_model": card.get("base_model"),
                                       "lora": card.get("lora"), "created": card.get("created")}
        if card.get("domain") and card["domain"] != domain.name:
            log(f"note: adapter was trained for domain '{card['domain']}', evaluated on '{domain.name}'")
    for name in models:
        top: dict = {}
        if primary_triplets:
            top["triplets"] = {"set": primary_triplets, **headline(sets[primary_triplets][name])["triplets"]}
        if primary_pairs:
            top["pairs"] = {"set": primary_pairs, **headline(sets[primary_pairs][name])["pairs"]}
        result[name] = top
    if "adapter" in result:
        rel, absolute = improvement(result["base"], result["adapter"])
        result["improvement"] = {**rel, "absolute": absolute}
    chosen = result.get("adapter", result["base"]).get("pairs", {})
    result["calibrated_threshold"] = chosen.get("calibrated_threshold")
    result["sets"] = sets
    timing["texts"] = len(texts)
    timing["total_s"] = time.time() - started
    result["timing"] = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in timing.items()}

    output.mkdir(parents=True, exist_ok=True)
    files = []
    for name, entry in sets.items():
        files.extend(write_set_files(output, name, entry, raws[name], models, target_precision, plots))
    result["files"] = [METRICS_FILE, REPORT_FILE] + [Path(f).name for f in files]
    with atomic_writer(output / REPORT_FILE) as fh:
        fh.write(render_report(result))
    write_json(output / METRICS_FILE, result)
    return result


def registry_summary(result: dict, output) -> dict:
    """What ``--register-metrics`` stores in the registry record: headline metrics and threshold."""
    summary = {
        "evaluated": result["created"],
        "domain": result["domain"],
        "target_precision": result["target_precision"],
        "calibrated_threshold": result["calibrated_threshold"],
        "primary": result["primary"],
        "metrics_file": str(Path(output).resolve() / METRICS_FILE),
    }
    for name in ("adapter", "base", "improvement"):
        if name in result:
            summary[name] = result[name]
    summary["sets"] = {n: {m: headline(s[m]) for m in ("base", "adapter") if m in s}
                       for n, s in result["sets"].items()}
    return summary


def _version() -> str:
    from cachetune import __version__

    return __version__
