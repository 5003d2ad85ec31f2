"""PNG plots of an evaluation: score histograms, precision-recall curve, hit vs false-hit rate.

matplotlib is imported inside each function and drawn on an Agg canvas (no pyplot, no global
state, no display needed). Each plot shows the base model and, when evaluated, the adapter on
the same axes. Files are written to a temporary name and renamed, so a failed plot never
leaves half a PNG behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Dict, Optional, Sequence

COLORS = {"base": "#1f77b4", "adapter": "#d62728"}


def _figure(width: float = 6.4, height: float = 4.4):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp.png", dir=path.parent)
    os.close(fd)
    try:
        fig.tight_layout()
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def similarity_histograms(path, title: str, scores: Dict[str, Dict[str, Sequence[float]]],
                          thresholds: Optional[Dict[str, Optional[float]]] = None) -> Path:
    """Cosine similarity of positives vs negatives; ``scores[model] = {"pos": [...], "neg": [...]}``.

    Base is drawn filled, the adapter as outlines on the same bins, so the shift of each
    distribution is visible; dashed lines mark each model's calibrated threshold.
    """
    import numpy as np

    fig, ax = _figure()
    bins = np.linspace(-0.2, 1.0, 49)
    for model, parts in scores.items():
        color = COLORS.get(model, "gray")
        filled = model == "base"
        for part, alpha in (("pos", 0.45), ("neg", 0.25)):
            values = np.clip(np.asarray(parts[part], dtype=float), bins[0], bins[-1])
            label = f"{model}: {'same question (1)' if part == 'pos' else 'different (0)'}"
            if filled:
                ax.hist(values, bins=bins, alpha=alpha, color=color if part == "pos" else "#7f7f7f",
                        label=label, density=True)
            else:
                ax.hist(values, bins=bins, histtype="step", linewidth=1.6,
                        color=color, linestyle="-" if part == "pos" else ":", label=label, density=True)
    for model, threshold in (thresholds or {}).items():
        if threshold is not None:
            ax.axvline(threshold, color=COLORS.get(model, "gray"), linestyle="--", linewidth=1,
                       label=f"{model}: calibrated threshold {threshold:.3f}")
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, path)


def precision_recall_curve(path, title: str, curves: Dict[str, dict], target_precision: Optional[float] = None,
                           ap: Optional[Dict[str, float]] = None) -> Path:
    """Precision against recall (= hit rate); ``curves[model]`` has ``precision`` and ``recall``."""
    fig, ax = _figure()
    for model, curve in curves.items():
        label = model + (f" (AP {ap[model]:.3f})" if ap and model in ap else "")
        ax.plot([0.0, *curve["recall"]], [curve["precision"][0], *curve["precision"]],
                color=COLORS.get(model, "gray"), drawstyle="steps-post", label=label)
    if target_precision is not None:
        ax.axhline(target_precision, color="black", linestyle=":", linewidth=1,
                   label=f"target precision {target_precision:g}")
    ax.set_xlabel("recall (hit rate)")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.0)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower left")
    return _save(fig, path)


def cache_curve(path, title: str, simulations: Dict[str, list],
                calibrated: Optional[Dict[str, dict]] = None) -> Path:
    """Hit rate against false-hit rate over the thresholds 0.50 .. 0.99.

    ``simulations[model]`` is the cache-simulation table; every 0.1 is labelled with its
    threshold, and each model's calibrated operating point is starred.
    """
    fig, ax = _figure()
    for model, rows in simulations.items():
        color = COLORS.get(model, "gray")
        xs = [r["false_hit_rate"] for r in rows]
        ys = [r["hit_rate"] for r in rows]
        ax.plot(xs, ys, marker=".", markersize=3, color=color, label=model)
        for r in rows:
            if abs(r["threshold"] * 10 - round(r["threshold"] * 10)) < 1e-9:
                ax.annotate(f"{r['threshold']:.1f}", (r["false_hit_rate"], r["hit_rate"]), fontsize=6,
                            color=color, xytext=(3, -8), textcoords="offset points")
        point = (calibrated or {}).get(model)
        if point and point.get("calibrated_threshold") is not None:
            ax.plot([point["false_hit_rate"]], [point["hit_rate"]], marker="*", markersize=12, color=color,
                    linestyle="none", label=f"{model} at {point['calibrated_threshold']:.3f}")
    ax.set_xlabel("false-hit rate (share of different-question pairs that hit)")
    ax.set_ylabel("hit rate (share of same-question pairs that hit)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)
