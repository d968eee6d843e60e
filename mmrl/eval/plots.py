"""PNG curves of a run from its `metrics.jsonl`: reward (total and components), accuracy, completion length, KL and
loss, with a dashed vertical line, labelled with the stage name, where the `stage` value changes.

>>> written, notes = plot_run("runs/quickstart")  # doctest: +SKIP
>>> [p.name for p in written]  # doctest: +SKIP
['reward.png', 'accuracy.png', 'completion_length.png', 'kl.png', 'loss.png']
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmrl.errors import UserError


@dataclass(frozen=True)
class PlotSpec:
    """One figure: its file stem, title, y label, and which metric keys it draws."""

    stem: str
    title: str
    ylabel: str
    select: Callable[[Sequence[str]], list[str]]


def _reward_keys(keys: Sequence[str]) -> list[str]:
    components = sorted(k for k in keys if re.fullmatch(r"reward/[^/]+", k) and k != "reward/total"
                        and not k.endswith(("_std", "/std")))
    return (["reward/total"] if "reward/total" in keys else []) + components


def _present(*names: str) -> Callable[[Sequence[str]], list[str]]:
    return lambda keys: [n for n in names if n in keys]


PLOTS = (
    PlotSpec("reward", "Reward", "reward", _reward_keys),
    PlotSpec("accuracy", "Accuracy", "accuracy", _present("accuracy", "reward/accuracy", "eval/accuracy")),
    PlotSpec("completion_length", "Completion length", "tokens",
             _present("completion_length/mean", "completion_length/min", "completion_length/max", "completion_length")),
    PlotSpec("kl", "KL to the reference", "KL", _present("kl", "kl/mean")),
    PlotSpec("loss", "Loss", "loss", _present("loss")),
)


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl, one per step (the last row wins when a resumed run logged a step twice)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found; `mmrl plot` needs a run directory written by `mmrl train` or `mmrl sft`")
    lines = path.read_text(encoding="utf-8").splitlines()
    by_step: dict[float, dict[str, Any]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # a run killed mid-write leaves a partial last line: ignore it
                continue
            raise UserError(f"{path}:{number}: not a JSON object; fix or delete that line") from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), (int, float)):
            raise UserError(f"{path}:{number}: each line must be a JSON object with a numeric 'step'")
        by_step[row["step"]] = row
    return [by_step[s] for s in sorted(by_step)]


def stage_changes(rows: Sequence[dict[str, Any]]) -> list[tuple[float, str]]:
    """`(step, label)` where the `stage` value changes, the first stage included (empty without a `stage` key)."""
    changes: list[tuple[float, str]] = []
    previous: Any = object()
    for row in rows:
        if "stage" not in row:
            continue
        if row["stage"] != previous:
            label = str(row.get("stage_name") or f"stage {row['stage']}")
            changes.append((row["step"], label))
            previous = row["stage"]
    return changes


def _series(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in rows:
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            xs.append(row["step"])
            ys.append(float(value))
    return xs, ys


def _moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _curve(ax: Any, xs: list[float], ys: list[float], key: str, lw: float, label: str, color: Any = None,
           style: str = "-") -> Any:
    """One metric's curve (a faint raw line plus its moving average when there are many points); its colour."""
    if len(xs) < 20 or key.startswith("eval/"):
        (line,) = ax.plot(xs, ys, marker="o", markersize=3, linewidth=lw, label=label, color=color, linestyle=style)
        return line.get_color()
    (line,) = ax.plot(xs, ys, linewidth=0.8, alpha=0.35, color=color, linestyle=style)
    ax.plot(xs, _moving_average(ys, max(5, len(ys) // 20)), color=line.get_color(), linewidth=lw, label=label,
            linestyle=style)
    return line.get_color()


def _draw(spec: PlotSpec, rows: Sequence[dict[str, Any]], keys: list[str], changes, out: Path,
          other: tuple[str, Sequence[dict[str, Any]]] | None = None) -> Path:
    """Draw `spec`'s `keys` of `rows`; with `other` = (name, rows), that run's same metrics overlaid, dashed, in the
    same colour per metric (the comparison of two runs is read on one set of axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for key in keys:
        xs, ys = _series(rows, key)
        lw = 2.2 if key.endswith("total") or len(keys) == 1 else 1.4
        color = _curve(ax, xs, ys, key, lw, key) if xs else None
        if other is not None:
            oxs, oys = _series(other[1], key)
            if oxs:
                _curve(ax, oxs, oys, key, lw, f"{key} ({other[0]})", color, "--")
    top = ax.get_ylim()[1]
    for i, (step, label) in enumerate(changes):
        if i > 0:
            ax.axvline(step, color="grey", linestyle="--", linewidth=1)
        ax.text(step, top, f" {label}", rotation=90, va="top", ha="left", fontsize=8, color="dimgrey")
    ax.set_title(spec.title)
    ax.set_xlabel("step")
    ax.set_ylabel(spec.ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path = out / f"{spec.stem}.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> tuple[list[Path], list[str]]:
    """Write `<run_dir>/plots/*.png` (or into `out_dir`); return the written paths and notes on skipped plots."""
    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"run directory {run} does not exist; pass the directory of a run (e.g. runs/quickstart)")
    rows = read_metrics(run / "metrics.jsonl")
    if not rows:
        raise UserError(f"{run / 'metrics.jsonl'} has no rows yet; plot after the run has logged a step")
    keys = sorted({k for row in rows for k in row})
    changes = stage_changes(rows)
    out = Path(out_dir) if out_dir is not None else run / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written, notes = [], []
    for spec in PLOTS:
        selected = [k for k in spec.select(keys) if _series(rows, k)[0]]
        if not selected:
            notes.append(f"{spec.stem}: skipped (no metric among its keys in metrics.jsonl)")
            continue
        written.append(_draw(spec, rows, selected, changes, out))
    return written, notes
