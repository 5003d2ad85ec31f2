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

from cachetune.core.evaluate import metrics as M
from cachetune.core.types import Domain, EvaluationContext, EvaluationSet
from cachetune.core.errors import CachetuneError
from cachetune.core.evaluate.report import render_report, write_set_files
from cachetune.core.evaluate.inputs import (
    EvalInput,
    check_pair_labels,
    read_holdout,
    read_pairs,
    read_triplets,
)
from cachetune.core.jsonl import atomic_writer, write_json

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
# How many of the highest-scoring different-question pairs the report lists per model.
TOP_FALSE_HITS = 5
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
        inputs.append(EvalInput(_unique_name(f"triplets-{Path(path).stem}", taken), "triplets", rows, str(path),
                                "triplets (--triplets)", notes))
    if holdout is not None:
        held = read_holdout(holdout, domain.name)
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


def derived_pairs(rows: Sequence[dict]) -> List[dict]:
    """Triplets as pairs: (anchor, positive) labelled 1, (anchor, negative) labelled 0, once each."""
    out, seen = [], set()
    for row in rows:
        for other, label in ((row["positive"], 1), (row["negative"], 0)):
            key = (row["anchor"], other, label)
            if key not in seen:
                seen.add(key)
                out.append({"sentence1": row["anchor"], "sentence2": other, "label": label})
    return out


def _texts_of(item: EvalInput) -> List[str]:
    fields = ("sentence1", "sentence2") if item.kind == "pairs" else ("anchor", "positive", "negative")
    return [row[f] for row in item.rows for f in fields]


def unique_texts(inputs: Sequence[EvalInput]) -> Dict[str, int]:
    """Every distinct text of every input -> its row in the embedding matrix."""
    index: Dict[str, int] = {}
    for item in inputs:
        for text in _texts_of(item):
            if text not in index:
                index[text] = len(index)
    return index


# -- models ---------------------------------------------------------------------------
def resolve_adapter(spec: Optional[str], registry=None) -> Tuple[Optional[Path], Optional[str]]:
    """``--adapter NAME|DIR`` -> (adapter folder, registry name or None)."""
    if not spec:
        return None, None
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CachetuneError("--adapter expects an adapter folder or a registry name, got a file", spec)
        return path, None
    if spec.startswith((".", "/", "~")) or "/" in spec or "\\" in spec:
        raise CachetuneError("adapter folder not found (--adapter)", spec)
    registry_cls = _registry_class(f"--adapter {spec}")
    adapter_registry = registry_cls(registry) if registry else registry_cls()
    try:
        # check() re-hashes the registered files: a corrupt adapter is refused, never loaded.
        folder = adapter_registry.check(spec) if hasattr(adapter_registry, "check") else adapter_registry.resolve(spec)
    except CachetuneError:
        raise
    except (KeyError, LookupError, FileNotFoundError) as exc:
        raise CachetuneError(f"--adapter {spec}: not a folder and not in the registry ({exc})") from None
    return Path(folder), spec


def _registry_class(what: str):
    try:
        from cachetune.registry import AdapterRegistry
    except ImportError:
        raise CachetuneError(f"{what}: needs the adapter registry (cachetune.registry.AdapterRegistry), "
                             "which is not available in this install") from None
    return AdapterRegistry


def register_metrics(name: str, summary: dict, registry=None) -> None:
    """Store ``summary`` (metrics and calibrated threshold) in the registry record ``name``."""
    registry_cls = _registry_class("--register-metrics")
    adapter_registry = registry_cls(registry) if registry else registry_cls()
    adapter_registry.update_metrics(name, summary)


def encode(model, texts: Sequence[str], batch_size: int, show_progress: bool) -> np.ndarray:
    if not texts:
        return np.zeros((0, 1), dtype=np.float32)
    emb = model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                       show_progress_bar=show_progress)
    return np.asarray(emb, dtype=np.float32)


def count_truncated(model, texts: Sequence[str]) -> np.ndarray:
    """Which texts have more word pieces (with special tokens) than the model reads."""
    limit = getattr(model, "max_seq_length", None)
    tokenizer = getattr(model, "tokenizer", None)
    if not limit or tokenizer is None or not texts:
        return np.zeros(len(texts), dtype=bool)
    ids = tokenizer(list(texts), add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    return np.array([len(x) > limit for x in ids], dtype=bool)


# -- scoring --------------------------------------------------------------------------
def _pair_scores(rows, emb, index) -> np.ndarray:
    a = emb[[index[r["sentence1"]] for r in rows]]
    b = emb[[index[r["sentence2"]] for r in rows]]
    return np.einsum("ij,ij->i", a, b).astype(np.float64)


def score_input(item: EvalInput, emb: np.ndarray, index: Dict[str, int], target_precision: float,
                n_bootstrap: int, seed: int) -> Tuple[dict, dict]:
    """(metrics, raw scores for plots) of one model on one input."""
    out: dict = {}
    raw: dict = {}
    if item.kind == "triplets":
        anchors = emb[[index[r["anchor"]] for r in item.rows]]
        pos = np.einsum("ij,ij->i", anchors, emb[[index[r["positive"]] for r in item.rows]]).astype(np.float64)
        neg = np.einsum("ij,ij->i", anchors, emb[[index[r["negative"]] for r in item.rows]]).astype(np.float64)
        out["triplets"] = M.triplet_metrics(pos, neg)
        pair_rows = derived_pairs(item.rows)
        extra_scores = {"pos": pos, "neg": neg}
    else:
        pair_rows = item.rows
        extra_scores = None
    scores = _pair_scores(pair_rows, emb, index)
    labels = np.array([r["label"] for r in pair_rows])
    if 0 < labels.sum() < labels.size:
        out["pairs"] = M.pair_metrics(scores, labels, target_precision, n_bootstrap, seed)
        raw["curve"] = M.curves(scores, labels)
    raw["pos"], raw["neg"] = scores[labels == 1].tolist(), scores[labels == 0].tolist()
    raw["pair_rows"], raw["scores"] = pair_rows, scores
    worst = [int(i) for i in np.argsort(-scores, kind="stable") if labels[i] == 0][:TOP_FALSE_HITS]
    out["top_false_hits"] = [{"sentence1": pair_rows[i]["sentence1"], "sentence2": pair_rows[i]["sentence2"],
                              "score": float(scores[i])} for i in worst]
    if item.metrics is not None:
        out["extra"] = _extra_metrics(item, extra_scores or {"pair": scores})
    return out, raw


def _extra_metrics(item: EvalInput, scores: dict) -> dict:
    try:
        extra = item.metrics(item.rows, scores)
    except Exception as exc:
        raise CachetuneError(f"evaluation set '{item.name}': its metrics() failed: {exc!r}") from exc
    if not isinstance(extra, dict) or not all(isinstance(v, (int, float)) for v in extra.values()):
        raise CachetuneError(f"evaluation set '{item.name}': metrics() must return {{name: number}}")
    return {str(k): float(v) for k, v in extra.items()}


def score_sets(inputs: Sequence[EvalInput], embeddings: Dict[str, np.ndarray], index: Dict[str, int],
               truncated: np.ndarray, max_seq_length, target_precision: float, n_bootstrap: int,
               seed: int) -> Tuple[Dict[str, dict], Dict[str, dict]]:
    """Per set: its description and every model's metrics (and, for the files, the raw scores)."""
    sets: Dict[str, dict] = {}
    raws: Dict[str, dict] = {}
    for item in inputs:
        trunc_rows = sum(1 for i in range(len(item.rows))
                         if any(truncated[index[t]] for t in _texts_of_row(item, i)))
        entry = {"kind": item.kind, "source": item.source, "description": item.description, "rows": len(item.rows),
                 "distinct_texts": len(set(_texts_of(item))), "truncated_rows": trunc_rows,
                 "notes": list(item.notes)}
        if trunc_rows:
            entry["notes"].append(f"{trunc_rows} rows have a text longer than max_seq_length "
                                  f"{max_seq_length} word pieces (truncated when encoded)")
        raws[item.name] = {}
        for name, emb in embeddings.items():
            entry[name], raws[item.name][name] = score_input(item, emb, index, target_precision, n_bootstrap, seed)
        if "adapter" in entry:
            entry["improvement"], entry["improvement_absolute"] = improvement(entry["base"], entry["adapter"])
        sets[item.name] = entry
    return sets, raws


def improvement(base: dict, adapter: dict) -> Tuple[dict, dict]:
    """(relative, absolute) changes of the headline metrics, per kind."""
    rel, absolute = {}, {}
    for kind, names in (("triplets", M.TRIPLET_METRICS), ("pairs", M.PAIR_METRICS)):
        if kind in base and kind in adapter:
            rel[kind] = {n: M.relative_improvement(adapter[kind][n], base[kind][n]) for n in names}
            absolute[kind] = {n: adapter[kind][n] - base[kind][n] for n in names}
    return rel, absolute


def _headline(result: dict) -> dict:
    """A set's metrics without the long tables (for the top-level keys and the registry)."""
    out = {}
    for kind in ("triplets", "pairs"):
        if kind in result:
            out[kind] = {k: v for k, v in result[kind].items() if k != "cache_simulation"}
    return out


# -- the stage ------------------------------------------------------------------------
def evaluate(domain: Domain, output, *, pairs: Sequence = (), triplets: Sequence = (), holdout=None,
             columns: Optional[Sequence[str]] = None, evaluation_sets: Sequence[EvaluationSet] = (),
             eval_source: Optional[str] = None, data_dir=None, limit: Optional[int] = None, seed: int = 0,
             base_model: Optional[str] = None, adapter: Optional[str] = None, registry=None,
             target_precision: float = 0.95, n_bootstrap: int = 1000, batch_size: int = 64,
             max_seq_length: Optional[int] = None, device: Optional[str] = None, plots: bool = True,
             show_progress: bool = False, log: Log = lambda m: None) -> dict:
    """Run the evaluation and write its outputs; returns the ``metrics.json`` content."""
    started = time.time()
    if not 0.0 < target_precision <= 1.0:
        raise CachetuneError(f"--target-precision must be in (0, 1], got {target_precision}")
    if limit is not None and limit <= 0:
        raise CachetuneError(f"--limit must be positive, got {limit}")
    if batch_size <= 0:
        raise CachetuneError(f"--batch-size must be positive, got {batch_size}")
    if n_bootstrap < 0:
        raise CachetuneError(f"--bootstrap must be >= 0, got {n_bootstrap}")
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise CachetuneError("output exists and is not a folder", output)

    # Everything that can be wrong with the inputs or the adapter fails here, before encoding.
    adapter_dir, adapter_name = resolve_adapter(adapter, registry)
    from cachetune.core.models import canonical_model_id, resolve_base_model

    card: dict = {}
    if adapter_dir is not None:
        from cachetune.core.adapters import check_base_model, read_card

        card = read_card(adapter_dir)
        base_id = check_base_model(adapter_dir, base_model, card)
    else:
        base_id = base_model or domain.default_base_model
    resolve_base_model(base_id)  # a missing local path fails now
    context = EvaluationContext(domain=domain.name, source=eval_source, holdout=Path(holdout) if holdout else None,
                                data_dir=Path(data_dir) if data_dir else None, limit=limit, seed=seed)
    inputs, skipped = gather_inputs(domain, pairs=pairs, triplets=triplets, holdout=holdout, columns=columns,
                                    evaluation_sets=evaluation_sets, context=context, log=log)
    for item in skipped:
        log(f"skipped evaluation set '{item['set']}': {item['reason']}")
    if not inputs:
        raise CachetuneError("nothing to evaluate: give --pairs, --triplets or --holdout, or make the domain's "
                             "evaluation data available (--eval-data DIR or $CACHETUNE_DATA_DIR)")
    index = unique_texts(inputs)
    texts = list(index)
    n_refs = sum(len(_texts_of(i)) for i in inputs)
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
            top["triplets"] = {"set": primary_triplets, **_headline(sets[primary_triplets][name])["triplets"]}
        if primary_pairs:
            top["pairs"] = {"set": primary_pairs, **_headline(sets[primary_pairs][name])["pairs"]}
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


def _texts_of_row(item: EvalInput, i: int) -> List[str]:
    row = item.rows[i]
    fields = ("sentence1", "sentence2") if item.kind == "pairs" else ("anchor", "positive", "negative")
    return [row[f] for f in fields]


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
    summary["sets"] = {n: {m: _headline(s[m]) for m in ("base", "adapter") if m in s}
                       for n, s in result["sets"].items()}
    return summary


def _version() -> str:
    from cachetune import __version__

    return __version__
