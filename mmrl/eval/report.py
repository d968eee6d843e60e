"""Aggregate item scores into the evaluation report (overall, per task, per category) and render it as markdown.

>>> from mmrl.eval.scoring import ItemScore
>>> items = [ItemScore("a", "math", None, [1.0, 0.0]), ItemScore("b", "mc", None, [0.0, 0.0])]
>>> report = build_report(items, k=2)
>>> report["accuracy"], report["pass@2"], report["by_task"]["math"]["accuracy"]
(0.25, 0.5, 0.5)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mmrl.eval.metrics import mean_at_k, pass_at_k, pass_ks
from mmrl.eval.scoring import ItemScore

UNSCORABLE_NOTE = "unscorable items (gold answer that cannot be verified) are excluded from every denominator"


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(items: Sequence[ItemScore], k: int, threshold: float = 0.5) -> dict[str, Any]:
    """accuracy (= mean@k: the mean fraction of correct samples), pass@j for k > 1, counts."""
    scored = [it for it in items if not it.unscorable]
    summary: dict[str, Any] = {
        "n": len(items),
        "scored": len(scored),
        "unscorable": len(items) - len(scored),
        "accuracy": _mean([it.n_correct(threshold) / len(it.scores) for it in scored]),
        "mean_score": _mean([mean_at_k([s for s in it.scores if s is not None]) for it in scored]),
    }
    if k > 1:
        summary["mean@k"] = summary["accuracy"]
        for j in pass_ks(k):
            summary[f"pass@{j}"] = _mean([pass_at_k(len(it.scores), it.n_correct(threshold), j) for it in scored])
    return summary


def _group(items: Sequence[ItemScore], key) -> dict[str, list[ItemScore]]:
    groups: dict[str, list[ItemScore]] = {}
    for item in items:
        name = key(item)
        if name is not None:
            groups.setdefault(name, []).append(item)
    return dict(sorted(groups.items()))


def build_report(
    items: Sequence[ItemScore], k: int, threshold: float = 0.5, info: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON report: overall summary, `k`, the unscorable ids and a note on them, `by_task`, `by_category`."""
    report: dict[str, Any] = {**summarize(items, k, threshold), "k": k, "correct_threshold": threshold}
    report["unscorable_ids"] = [it.id for it in items if it.unscorable]
    report["note"] = UNSCORABLE_NOTE
    report["by_task"] = {name: summarize(group, k, threshold) for name, group in _group(items, lambda i: i.task).items()}
    report["by_category"] = {
        name: summarize(group, k, threshold) for name, group in _group(items, lambda i: i.category).items()
    }
    if info:
        report.update(info)
    return report


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _metric_columns(report: dict[str, Any]) -> list[str]:
    return ["accuracy"] + [key for key in report if key.startswith("pass@")]


def report_markdown(report: dict[str, Any]) -> str:
    """A markdown table: one row for all items, one per task, one per category."""
    metrics = _metric_columns(report)
    header = ["group", "n", "scored", *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]

    def row(name: str, summary: dict[str, Any]) -> str:
        cells = [name, summary["n"], summary["scored"], *(summary.get(m) for m in metrics)]
        return "| " + " | ".join(_fmt(c) for c in cells) + " |"

    lines.append(row("**all**", report))
    lines += [row(f"task: {name}", s) for name, s in report["by_task"].items()]
    lines += [row(f"category: {name}", s) for name, s in report["by_category"].items()]
    footer = f"\nk = {report['k']}"
    if report["unscorable"]:
        footer += f"; {report['unscorable']} unscorable item(s) excluded from the accuracy denominator"
    return "\n".join(lines) + footer + "\n"


def flat_metrics(report: dict[str, Any], prefix: str = "eval/") -> dict[str, float]:
    """Scalars for metrics.jsonl / TensorBoard and for `StageSchedule.advance`: `eval/accuracy`, `eval/pass@4`,
    `eval/unscorable`, `eval/task/<task>/accuracy`, `eval/category/<name>/accuracy`."""
    out: dict[str, float] = {}
    for key in ("accuracy", "mean@k", *[k for k in report if k.startswith("pass@")], "unscorable", "completion_length"):
        if isinstance(report.get(key), (int, float)):
            out[f"{prefix}{key}"] = float(report[key])
    for group in ("task", "category"):
        for name, summary in report.get(f"by_{group}", {}).items():
            if summary.get("accuracy") is not None:
                out[f"{prefix}{group}/{name}/accuracy"] = float(summary["accuracy"])
    return out
