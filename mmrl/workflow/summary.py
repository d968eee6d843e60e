"""The pipeline's `summary.json`, its markdown accuracy table and the `accuracy.png` bar chart."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def build_summary(records: list[dict[str, Any]], statuses: dict[str, str], wall_seconds: float) -> dict[str, Any]:
    """`records`: each step's DONE record, in pipeline order. Accuracy is keyed by the eval steps' labels."""
    evals = [r for r in records if r["kind"] == "eval"]
    accuracy = {r["outputs"]["label"]: r["metrics"].get("accuracy") for r in evals}
    counts = {r["outputs"]["label"]: r["metrics"].get("n") for r in evals}
    distinct = set(counts.values())
    steps = {
        r["name"]: {"kind": r["kind"], "status": statuses.get(r["name"], "done"), "seconds": r["seconds"],
                    "outputs": r["outputs"], "metrics": r["metrics"]}
        for r in records
    }
    return {
        "accuracy": accuracy,
        "n_eval": distinct.pop() if len(distinct) == 1 else counts,
        "models": {r["outputs"]["label"]: r["outputs"]["model"] for r in evals},
        "steps": steps,
        "seconds": round(sum(r["seconds"] for r in records), 3),  # compute time of all steps, whenever they ran
        "wall_seconds": round(wall_seconds, 3),  # this invocation (skipped steps cost nothing)
    }


def accuracy_table(summary: dict[str, Any]) -> str:
    """Markdown table of the eval steps: label, model, accuracy, n."""
    lines = ["| eval | model | accuracy | n |", "|---|---|---|---|"]
    counts = summary["n_eval"]
    for label, acc in summary["accuracy"].items():
        n = counts.get(label) if isinstance(counts, dict) else counts
        shown = "-" if acc is None else f"{acc:.3f}"
        lines.append(f"| {label} | {_short(summary['models'].get(label, ''))} | {shown} | {n} |")
    return "\n".join(lines) + "\n"


def _short(model: str) -> str:
    path = Path(model)
    if path.name.startswith("step-") and path.parent.name == "checkpoints":
        return f"{path.parent.parent.name}/{path.name}"  # <step dir>/step-N, not the absolute path
    return model


def plot_accuracy(summary: dict[str, Any], out: Path) -> Path | None:
    """Bar chart of the eval accuracies (None when there is nothing to plot)."""
    items = [(label, acc) for label, acc in summary["accuracy"].items() if acc is not None]
    if not items:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(3.0, 1.2 * len(items) + 1.5), 3.5), dpi=100)
    bars = ax.bar([label for label, _ in items], [acc for _, acc in items], color="#4878a8")
    for bar, (_, acc) in zip(bars, items):
        ax.text(bar.get_x() + bar.get_width() / 2, acc, f"{acc:.2f}", ha="center", va="bottom", fontsize=9)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title("accuracy by eval step")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def write_summary(root: Path, summary: dict[str, Any]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "summary.json"
    _write_atomic(path, json.dumps(summary, indent=2, default=str) + "\n")
    return path
