"""The files of an evaluation besides ``metrics.json``: ``report.md`` (its metrics as markdown
tables), per set a cache-simulation CSV, a CSV of every scored pair, and the PNG plots."""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import List, Optional, Sequence

from cachetune.core.jsonl import atomic_writer
from cachetune.core.evaluate.metrics import CACHE_THRESHOLDS, PAIR_METRICS, TRIPLET_METRICS

# Thresholds shown in the report's cache-simulation tables (the CSV has all 50).
REPORT_THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99)
LABELS = {
    "margin": "margin (mean cos(a,p) - cos(a,n))", "pos": "mean cos(a,p)", "neg": "mean cos(a,n)",
    "accuracy": "triplet accuracy", "ap": "average precision", "auc": "ROC AUC", "best_f1": "best F1",
    "hit_rate": "hit rate at calibrated threshold", "false_hit_rate": "false-hit rate at calibrated threshold",
}


def _num(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:+.1f}%"


def _ci(ci: Optional[list]) -> str:
    return "" if not ci else f" [{ci[0]:.3f}, {ci[1]:.3f}]"


def _cell(text: str, limit: int = 120) -> str:
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: List[str], rows: List[List[str]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _models(entry: dict) -> List[str]:
    return [m for m in ("base", "adapter") if m in entry]


def _summary(result: dict) -> List[str]:
    models = _models(result)
    lines: List[str] = []
    for kind, names in (("triplets", TRIPLET_METRICS), ("pairs", PAIR_METRICS)):
        if kind not in result["base"]:
            continue
        header = ["metric"] + models + (["relative improvement"] if "adapter" in models else [])
        rows = []
        for n in names:
            row = [LABELS[n]] + [_num(result[m][kind][n]) for m in models]
            if "adapter" in models:
                row.append(_pct(result["improvement"][kind][n]))
            rows.append(row)
        if kind == "pairs":
            rows.append(["calibrated threshold"] + [_num(result[m][kind]["calibrated_threshold"]) for m in models]
                        + ([""] if "adapter" in models else []))
        lines += [f"**{kind}** — set `{result['base'][kind]['set']}`", ""] + _table(header, rows) + [""]
    return lines


def _pairs_table(entry: dict) -> List[str]:
    models = [m for m in _models(entry) if "pairs" in entry[m]]
    rows = []
    for m in models:
        p = entry[m]["pairs"]
        rows.append([
            m, _num(p["ap"]) + _ci(p["ci95"].get("ap")), _num(p["auc"]),
            f"{_num(p['best_f1'])} @ {_num(p['best_threshold'], 3)} (P {_num(p['precision_at_best_f1'], 3)}, "
            f"R {_num(p['recall_at_best_f1'], 3)})",
            _num(p["calibrated_threshold"], 3) + _ci(p["ci95"].get("calibrated_threshold")),
            _num(p["hit_rate"]) + _ci(p["ci95"].get("hit_rate")), _num(p["false_hit_rate"]),
        ])
    header = ["model", "AP [95% CI]", "ROC AUC", "best F1 @ threshold", "stored threshold [in-sample 95% CI]",
              "hit rate [95% CI]", "false-hit rate"]
    target = entry[models[0]]["pairs"]["target_precision"]
    pos, neg = entry[models[0]]["pairs"]["positives"], entry[models[0]]["pairs"]["negatives"]
    return [f"Pairs: {pos:,} with label 1, {neg:,} with label 0; calibrated at precision ≥ {target:g} on "
            "unseen pairs (hit and false-hit rate: at the stored threshold, on the whole set).", ""] \
        + _table(header, rows) + [""]


def _retention_table(entry: dict) -> List[str]:
    """Calibration retention: the in-sample and the stored threshold, and what each keeps on unseen pairs."""
    models = [m for m in _models(entry) if "pairs" in entry[m] and entry[m]["pairs"].get("calibration_retention")]
    if not models:
        return []
    rows, reasons = [], []
    for m in models:
        r = entry[m]["pairs"]["calibration_retention"]
        kept, own = r.get("retention") or {}, r.get("in_sample_retention") or {}
        rows.append([m, _num(r["in_sample_threshold"], 3), _num(own.get("precision"), 3), _num(own.get("hit_rate"), 3),
                     _num(r["threshold"], 3) if r["threshold"] is not None else "none",
                     _num(kept.get("precision"), 3), _num(kept.get("precision_lower_95"), 3),
                     _num(kept.get("hit_rate"), 3), _num(kept.get("false_hit_rate"), 3)])
        if r.get("reason"):
            reasons.append(f"- {m}: no threshold stored: {r['reason']}.")
    r = entry[models[0]]["pairs"]["calibration_retention"]
    header = ["model", "in-sample threshold", "its precision on unseen", "its hit rate on unseen",
              "stored threshold", "precision kept on unseen", "lower 95%", "hit rate on unseen", "false-hit rate"]
    return ([f"Calibration retention ({r['folds']}-fold x {r['repeats']}: each pair scored by a threshold "
             "calibrated without it):", ""] + _table(header, rows) + [""] + reasons + ([""] if reasons else []))


def _simulation_table(entry: dict) -> List[str]:
    models = [m for m in _models(entry) if "pairs" in entry[m]]
    header = ["threshold"] + [f"{m} {c}" for m in models for c in ("hit rate", "false-hit rate", "precision")]
    rows = []
    for m_rows in zip(*(entry[m]["pairs"]["cache_simulation"] for m in models)):
        if not any(abs(m_rows[0]["threshold"] - t) < 1e-9 for t in REPORT_THRESHOLDS):
            continue
        row = [f"{m_rows[0]['threshold']:.2f}"]
        for r in m_rows:
            row += [_num(r["hit_rate"], 3), _num(r["false_hit_rate"], 3), _num(r["precision"], 3)]
        rows.append(row)
    return ["Cache simulation (a hit when cosine ≥ threshold; every 0.01 in the CSV):", ""] + _table(header, rows) + [""]


def _set_section(name: str, entry: dict, files: List[str]) -> List[str]:
    lines = [f"### {name}", "", f"{entry['description']}  ", f"kind: {entry['kind']}, rows: {entry['rows']:,}, "
             f"distinct texts: {entry['distinct_texts']:,}, source: `{entry['source']}`", ""]
    lines += [f"- {note}" for note in entry["notes"]] + ([""] if entry["notes"] else [])
    models = _models(entry)
    if "triplets" in entry["base"]:
        header = ["model"] + [LABELS[n] for n in TRIPLET_METRICS]
        rows = [[m] + [_num(entry[m]["triplets"][n]) for n in TRIPLET_METRICS] for m in models]
        if "improvement" in entry:
            rows.append(["relative improvement"] + [_pct(entry["improvement"]["triplets"][n]) for n in TRIPLET_METRICS])
        lines += [f"Triplets: {entry['base']['triplets']['n']:,}; their (anchor, positive) and (anchor, negative) "
                  "pairs give the pair metrics below." if entry["kind"] == "triplets" else "", ""]
        lines += _table(header, rows) + [""]
    if "pairs" in entry["base"]:
        lines += _pairs_table(entry) + _retention_table(entry) + _simulation_table(entry)
    worst_model = models[-1]
    if entry[worst_model].get("top_false_hits"):
        lines += [f"Highest-scoring different-question pairs ({worst_model}): the false hits a low threshold serves "
                  "first.", ""]
        lines += _table(["cosine", "sentence1", "sentence2"],
                        [[_num(h["score"], 3), _cell(h["sentence1"]), _cell(h["sentence2"])]
                         for h in entry[worst_model]["top_false_hits"]]) + [""]
    extra = {m: entry[m].get("extra") for m in models if entry[m].get("extra")}
    if extra:
        names = sorted({k for d in extra.values() for k in d})
        lines += ["Metrics of the evaluation set itself:", ""]
        lines += _table(["model"] + names, [[m] + [_num(extra[m].get(k)) for k in names] for m in extra]) + [""]
    for kind in ("similarity_hist", "pr_curve", "cache_curve"):
        matches = [f for f in files if f.startswith(kind + "-") and f[len(kind) + 1:-4] == file_slug(name)]
        lines += [f"![{kind}]({f})" for f in matches]
    return lines + [""]


def file_slug(name: str) -> str:
    """A set's name as it appears in its file names."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "set"


def _write_simulation_csv(path: Path, entry: dict, models: Sequence[str]) -> Path:
    tables = {m: entry[m]["pairs"]["cache_simulation"] for m in models if "pairs" in entry[m]}
    with atomic_writer(path) as fh:
        writer = csv.writer(fh)
        writer.writerow(["threshold"] + [f"{m}_{c}" for m in tables for c in
                                         ("hit_rate", "false_hit_rate", "precision", "hits")])
        for i, threshold in enumerate(CACHE_THRESHOLDS):
            row = [f"{threshold:.2f}"]
            for m in tables:
                r = tables[m][i]
                row += [_fmt(r["hit_rate"]), _fmt(r["false_hit_rate"]), _fmt(r["precision"]), _fmt(r["hits"])]
            writer.writerow(row)
    return path


def _write_scores_csv(path: Path, raw: dict, models: Sequence[str]) -> Path:
    """Every scored pair with its label and each model's cosine (triplets as their pairs)."""
    rows = raw[models[0]]["pair_rows"]
    with atomic_writer(path) as fh:
        writer = csv.writer(fh)
        writer.writerow(["sentence1", "sentence2", "label", *models])
        for i, row in enumerate(rows):
            writer.writerow([row["sentence1"], row["sentence2"], row["label"],
                             *(repr(float(raw[m]["scores"][i])) for m in models)])
    return path


def _fmt(value) -> str:
    return "" if value is None else f"{value:.6f}"


def _plot_set(output: Path, name: str, entry: dict, raw: dict, models, target_precision: float) -> List[Path]:
    from cachetune.core.evaluate import plots

    slug = file_slug(name)
    title = f"{name} ({entry['kind']}, {entry['rows']} rows)"
    with_pairs = [m for m in models if "pairs" in entry[m]]
    out = [plots.similarity_histograms(
        output / f"similarity_hist-{slug}.png", title, {m: {"pos": raw[m]["pos"], "neg": raw[m]["neg"]} for m in models},
        {m: entry[m]["pairs"]["calibrated_threshold"] for m in with_pairs})]
    if with_pairs:
        out.append(plots.precision_recall_curve(
            output / f"pr_curve-{slug}.png", title, {m: raw[m]["curve"] for m in with_pairs}, target_precision,
            {m: entry[m]["pairs"]["ap"] for m in with_pairs}))
        out.append(plots.cache_curve(
            output / f"cache_curve-{slug}.png", title, {m: entry[m]["pairs"]["cache_simulation"] for m in with_pairs},
            {m: entry[m]["pairs"] for m in with_pairs}))
    return out


def write_set_files(output: Path, name: str, entry: dict, raw: dict, models: Sequence[str],
                    target_precision: float, plots: bool) -> List[Path]:
    """A set's CSVs and (when ``plots``) PNGs in ``output``; returns their paths."""
    slug = file_slug(name)
    files = [_write_simulation_csv(output / f"cache_simulation-{slug}.csv", entry, models),
             _write_scores_csv(output / f"scores-{slug}.csv", raw, models)]
    if plots:
        files.extend(_plot_set(output, name, entry, raw, models, target_precision))
    return files


def render_report(result: dict) -> str:
    models = result["models"]
    lines = [f"# Evaluation: {result['domain']}", "",
             f"- base model: `{models['base']['id']}` (max_seq_length {models['base']['max_seq_length']})"]
    if "adapter" in models:
        a = models["adapter"]
        lines.append(f"- adapter: `{a['name'] or a['path']}`" + (f" (trained for {a['domain']})" if a["domain"] else ""))
    lines += [f"- target precision: {result['target_precision']:g}; a cache hit is cosine ≥ threshold",
              f"- created: {result['created']}; {result['timing']['texts']:,} distinct texts, "
              f"{result['timing']['total_s']:.1f} s", ""]
    if result.get("calibrated_threshold") is not None:
        who = "adapter" if "adapter" in result else "base model"
        lines += [f"**Calibrated threshold ({who}): {result['calibrated_threshold']:.4f}**", ""]
    lines += ["## Summary", ""] + _summary(result)
    lines += ["## Sets", ""]
    for name, entry in result["sets"].items():
        lines += _set_section(name, entry, result.get("files", []))
    if result["skipped"]:
        lines += ["## Skipped", ""] + [f"- {s['set']}: {s['reason']}" for s in result["skipped"]] + [""]
    lines += ["Definitions of every metric: see the README (Evaluation metrics).", ""]
    return "\n".join(lines)
