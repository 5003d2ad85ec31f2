"""report.md and a PNG for `cachetune calibrate`: precision (with its confidence band) and hit rate
against the threshold on the user's pairs, the stored threshold marked."""

from __future__ import annotations

from pathlib import Path


def _plot(path: Path, curve: dict, threshold, confidence: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    t = curve["threshold"]
    ax.plot(t, curve["precision"], label="precision (observed)")
    ax.fill_between(t, curve["lower_bound"], curve["precision"], alpha=0.25,
                    label=f"lower bound of each threshold alone ({confidence:g} confidence)")
    ax.plot(t, curve["hit_rate"], label="hit rate (same-question pairs served)")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", label=f"stored threshold {threshold:.3f}")
    ax.set_xlabel("cosine threshold")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def tightening_lines(result: dict) -> list:
    """What more labels would buy, one sentence per row of ``result['tightening']``."""
    lines = []
    for row in result["tightening"]:
        head = f"label {row['more_pairs']} more pairs like these (x{row['factor']}):"
        if row["threshold"] is None:
            lines.append(f"{head} the target would still not be supported")
        else:
            lines.append(f"{head} threshold about {row['threshold']:.4f}, hit rate about {row['hit_rate']:.3f}, "
                         "same guarantee")
    return lines


def write_report(folder, result: dict, curve: dict) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _plot(folder / "calibration.png", curve, result["threshold"], result["confidence"])
    lines = [f"# Calibration of {result['adapter']} ({result['name']})", "",
             f"Pairs: {result['pairs']} ({result['positives']} same-question), file `{result['pairs_file']}`.",
             f"Target precision {result['target_precision']:g} at confidence {result['confidence']:g}.", ""]
    if result["threshold"] is None:
        lines.append(f"**No threshold stored**: {result['reason']}.")
    else:
        lines += [f"**Stored threshold: {result['threshold']:.4f}** (cosine similarity)", "",
                  "| | value |", "|---|---|",
                  f"| precision lower bound (the guarantee) | {result['precision_lower_bound']:g} |",
                  f"| precision observed | {result['precision_observed']:.4f} |",
                  f"| expected hit rate | {result['hit_rate']:.4f} |",
                  f"| pairs at or above the threshold | {result['served']} |", ""]
    lines += [f"- {line}" for line in tightening_lines(result)]
    lines += ["", "![precision and hit rate against the threshold](calibration.png)", ""]
    (folder / "report.md").write_text("\n".join(lines), encoding="utf-8")
    return folder / "report.md"
