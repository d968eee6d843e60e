"""`seeds: [0, 1, 2]`: run a pipeline once per seed and aggregate the runs — each eval (an ablation's arm) gets the
mean, spread and per-seed values of its accuracy and answer length; each train step its compute (seconds, sampled
tokens), final training metrics and the first -> last trend of its training curves; `summary.png` plots them with the
training curves of every train step.

Each seed's run is an ordinary pipeline in `<output_dir>/seed-<seed>/` with `trainer.seed=<seed>` (its own
summary.json, resumable, skipped when done); the data and eval items are the same for every seed, so the spread is the
training's own.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from mmrl.errors import UserError
from mmrl.workflow.claims import kept

# Training metrics aggregated from each train step's last row, and plotted as curves (mean over seeds).
FINAL_METRICS = ("accuracy", "reward/total", "completion_length/mean", "completion_length/correct",
                 "completion_length/incorrect", "entropy")
CURVES = (("accuracy", "training accuracy (reward)"), ("completion_length/incorrect", "length of incorrect "
                                                                                       "completions (tokens)"))


def seed_overrides(overrides: list[str] | tuple[str, ...], root: Path, seed: int) -> list[str]:
    """The overrides of one seed's run: the user's, then this seed's (which win)."""
    # quoted: an override's value is read as YAML, where "runs/a #1/seed-0" would be "runs/a" (a comment), the same
    # directory for every seed
    return [*overrides, "seeds=[]", f"trainer.seed={seed}", f"output_dir={json.dumps(str(root / f'seed-{seed}'))}"]


def refuse_seeds_outside_pipeline(command: str, overrides: list[str] | tuple[str, ...], seeds: list[int]) -> None:
    """`mmrl train/sft ... seeds=[0,1,2]` ran one run with trainer.seed and said nothing: only `mmrl pipeline` sweeps
    seeds. (A `seeds:` list in the YAML is shared by pipelines, e.g. configs/repro/base.yaml, and stays allowed.)"""
    from mmrl.config.loader import COMMAND_LINE, parse_override

    if seeds and any(parse_override(text)[0][0] == "seeds" for text in overrides):
        raise UserError(f"{COMMAND_LINE}: seeds={seeds} is read only by `mmrl pipeline` (a run per seed); "
                        f"`mmrl {command}` makes one run: set trainer.seed=N, or loop over seeds in the shell")


def refuse_output_dir_outside_pipeline(command: str, overrides: list[str] | tuple[str, ...], pipeline: list) -> None:
    """`mmrl train/sft ... output_dir=runs/x` (TRL's name for the run folder) trained into trainer.output_dir and said
    nothing: the top-level output_dir is only `mmrl pipeline`'s root folder. (A YAML's is shared by pipelines.)"""
    from mmrl.config.loader import COMMAND_LINE, parse_override

    given = [value for parts, value in map(parse_override, overrides) if parts == ["output_dir"]]
    if given and not pipeline:
        raise UserError(f"{COMMAND_LINE}: output_dir is `mmrl pipeline`'s folder; for mmrl {command} use "
                        f"trainer.output_dir={given[-1]}")


def spread(values: list[float | None]) -> dict[str, Any]:
    """Mean, sample std (0 for one value), min and max of the finite values; every value as given.

    >>> spread([0.5, 0.7, None])["mean"], spread([0.5, 0.7, None])["n"]
    (0.6, 2)
    """
    finite = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not finite:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0, "values": list(values)}
    return {"mean": kept(statistics.fmean(finite)),
            "std": kept(statistics.stdev(finite)) if len(finite) > 1 else 0.0,
            "min": min(finite), "max": max(finite), "n": len(finite), "values": list(values)}


def _train_rows(step: dict[str, Any]) -> list[dict[str, Any]]:
    from mmrl.eval.plots import read_metrics

    run_dir = step.get("outputs", {}).get("run_dir")
    path = Path(run_dir) / "metrics.jsonl" if run_dir else None
    return read_metrics(path) if path is not None and path.is_file() else []


def aggregate(per_seed: dict[int, dict[str, Any]], wall_seconds: float, claims: list | None = None) -> dict[str, Any]:
    """One summary of the seeds' summaries (`per_seed`: seed -> that run's summary.json content), with each of
    `claims` (the config's ClaimConfig list) tested over the seeds (`mmrl.workflow.claims`)."""
    seeds = list(per_seed)
    labels = list(dict.fromkeys(label for s in per_seed.values() for label in s["accuracy"]))
    arms = {}
    for label in labels:
        runs = [s for s in per_seed.values()]
        evals = [next((st for st in s["steps"].values() if st["kind"] == "eval"
                       and st["outputs"].get("label") == label), None) for s in runs]
        arms[label] = {
            "accuracy": spread([s["accuracy"].get(label) for s in runs]),
            "completion_length": spread([(e or {}).get("metrics", {}).get("completion_length") for e in evals]),
        }
    train: dict[str, Any] = {}
    curves: dict[str, dict[str, Any]] = {}
    step_names = list(dict.fromkeys(n for s in per_seed.values() for n, st in s["steps"].items()
                                    if st["kind"] in ("train", "sft")))
    for name in step_names:
        steps = [s["steps"].get(name) for s in per_seed.values()]
        rows = [_train_rows(st) if st else [] for st in steps]
        entry = {"seconds": spread([st["seconds"] if st else None for st in steps])}
        if any(st and st["kind"] == "train" for st in steps):
            entry["sampled_tokens"] = spread([sum(r.get("completion_tokens", 0) for r in rs) if rs else None
                                              for rs in rows])
            entry["final"] = {k: spread([st["metrics"].get(k) if st else None for st in steps])
                              for k in FINAL_METRICS}
            entry["trend"] = {key: _trend(rows, key) for key, _ in CURVES}
            curves[name] = _mean_curves(rows)
        train[name] = entry
    out = {"seeds": seeds, "arms": arms, "train": train, "curves": curves,
           "per_seed": {str(seed): s.get("path") for seed, s in per_seed.items()},
           "seconds": round(sum(s["seconds"] for s in per_seed.values()), 3), "wall_seconds": round(wall_seconds, 3)}
    if claims:
        from mmrl.workflow.claims import evaluate_claims

        out["claims"] = evaluate_claims(claims, per_seed)
    return out


TREND = 5  # steps averaged at each end of a training curve: one step's value comes from a few prompts x G completions


def _trend(rows_per_seed: list[list[dict[str, Any]]], key: str) -> dict[str, Any]:
    """Spread over seeds of the mean of `key` over each run's first and last TREND logged steps (a step without the
    metric, e.g. no incorrect completion, is skipped) — the "first -> last" figure an ablation's claim is about."""
    ends: dict[str, list[float | None]] = {"first": [], "last": []}
    logged: list[int] = []
    for rows in rows_per_seed:
        values = [float(r[key]) for r in sorted((r for r in rows if "step" in r), key=lambda r: r["step"])
                  if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        ends["first"].append(statistics.fmean(values[:TREND]) if values else None)
        ends["last"].append(statistics.fmean(values[-TREND:]) if values else None)
        logged.append(len(values))
    # per seed: how many steps logged the metric; under 2 x TREND the two ends share steps (a smaller change shows)
    return {**{end: spread(values) for end, values in ends.items()}, "logged_steps": logged}


def _mean_curves(rows_per_seed: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """Per metric of CURVES: the training step numbers and the mean over the seeds that logged that step."""
    out: dict[str, Any] = {}
    for key, _ in CURVES:
        by_step: dict[int, list[float]] = {}
        for rows in rows_per_seed:
            for row in rows:
                value = row.get(key)
                if isinstance(value, (int, float)) and math.isfinite(value) and "step" in row:
                    by_step.setdefault(int(row["step"]), []).append(float(value))
        steps = sorted(by_step)
        out[key] = {"step": steps, "mean": [round(statistics.fmean(by_step[s]), 4) for s in steps]}
    return out


SMOOTH = 5  # steps: a step's training accuracy comes from a few prompts x G completions, too noisy to read raw


def _smooth(values: list[float]) -> list[float]:
    """Trailing running mean over SMOOTH steps (fewer at the start).

    >>> _smooth([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0]
    """
    return [statistics.fmean(values[max(0, i - SMOOTH + 1): i + 1]) for i in range(len(values))]


def seeds_table(summary: dict[str, Any]) -> str:
    """Markdown: each arm's accuracy and answer length as mean ± std over the seeds, with the per-seed values."""
    lines = ["| eval | accuracy (mean ± std) | per seed | answer length (tokens) |", "|---|---|---|---|"]
    for label, arm in summary["arms"].items():
        acc, length = arm["accuracy"], arm["completion_length"]
        shown = "-" if acc["mean"] is None else f"{acc['mean']:.3f} ± {acc['std']:.3f}"
        values = ", ".join("-" if v is None else f"{v:.3f}" for v in acc["values"])
        tokens = "-" if length["mean"] is None else f"{length['mean']:.1f}"
        lines.append(f"| {label} | {shown} | {values} | {tokens} |")
    return "\n".join(lines) + "\n"


def plot_seeds(summary: dict[str, Any], out: Path) -> Path | None:
    """Accuracy per arm (mean bar, std error bar, one dot per seed) and the training curves of each train step."""
    arms = [(label, arm["accuracy"]) for label, arm in summary["arms"].items() if arm["accuracy"]["mean"] is not None]
    curves = any(c.get(key, {}).get("step") for c in summary["curves"].values() for key, _ in CURVES)
    if not arms and not curves:
        return None  # nothing measured yet; the caller removes an older plot so it is not read as this summary's
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 1 + len(CURVES), figsize=(5.0 + 4.5 * len(CURVES), 4.0), dpi=100)
    ax = axes[0]
    xs = range(len(arms))
    ax.bar(xs, [a["mean"] for _, a in arms], yerr=[a["std"] for _, a in arms], color="#4878a8", alpha=0.8,
           capsize=4)
    for x, (_, a) in zip(xs, arms):
        dots = [v for v in a["values"] if isinstance(v, (int, float))]
        ax.scatter([x] * len(dots), dots, color="black", s=12, zorder=3)
    ax.set_xticks(list(xs), [label for label, _ in arms], rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("eval accuracy")
    ax.set_title(f"eval accuracy over {len(summary['seeds'])} seed(s)\nmean ± std, one dot per seed", fontsize=9)
    if not arms:  # every eval failed or is missing: the training curves are still worth a look
        ax.text(0.5, 0.5, "no eval accuracy", ha="center", va="center", transform=ax.transAxes)
    for ax, (key, title) in zip(axes[1:], CURVES):
        for name, curves in summary["curves"].items():
            curve = curves.get(key, {})
            if curve.get("step"):
                ax.plot(curve["step"], _smooth(curve["mean"]), label=name)
        ax.set_xlabel("training step")
        ax.set_title(f"{title}\nmean over seeds, {SMOOTH}-step running mean", fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
