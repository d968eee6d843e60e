"""Run one pipeline step of each kind; each returns a `StepResult` (outputs, metrics, wiring for later steps)."""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmrl.config import MMRLConfig
from mmrl.config.workflow import PipelineStep
from mmrl.errors import UserError


@dataclass
class StepResult:
    outputs: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    wiring: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _release_memory() -> None:
    """Free the finished step's model before the next one loads its own."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _last_metrics(run_dir: Path) -> dict[str, float]:
    """The numeric values of the run's last metrics.jsonl row (the step's final loss, reward, ...)."""
    from mmrl.eval.plots import read_metrics

    path = run_dir / "metrics.jsonl"
    rows = read_metrics(path) if path.is_file() else []
    if not rows:
        return {}
    last = rows[-1]
    return {k: v for k, v in last.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v)}


def _plots(run_dir: Path) -> list[str]:
    from mmrl.eval.plots import plot_run

    try:
        written, notes = plot_run(run_dir)
    except UserError as err:  # e.g. no metrics rows: the run still counts, the plots are a convenience
        return [f"plots skipped: {err}"]
    return [f"plots: {len(written)} written to {run_dir / 'plots'}"] + ([] if written else notes)


def run_trained(step: PipelineStep, cfg: MMRLConfig, where: str) -> StepResult:
    """sft / train: run the trainer (resuming from the step's latest complete checkpoint) and wire its final one."""
    from mmrl.checkpoints.store import find_latest

    if step.kind == "sft":
        try:
            from mmrl.sft.trainer import train_sft as trainer
        except ImportError:
            raise UserError(f"{where}: an sft step needs the cold-start SFT trainer (mmrl.sft.trainer), which this "
                            "version does not have; remove the step or upgrade mmrl") from None
    else:
        from mmrl.rl.trainer import train as trainer
    try:
        run_dir = Path(trainer(cfg))
    finally:
        _release_memory()
    final = find_latest(run_dir)
    if final is None:
        raise UserError(f"{where}: the run in {run_dir} left no complete checkpoint to pass on; keep "
                        "trainer.save_final=true for pipeline steps")
    final = final.resolve()
    return StepResult(outputs={"run_dir": str(run_dir.resolve()), "checkpoint": str(final)},
                      metrics=_last_metrics(run_dir), wiring={"model.name_or_path": str(final)},
                      notes=_plots(run_dir))


def run_eval(step: PipelineStep, cfg: MMRLConfig, out: Path, label: str, where: str) -> StepResult:
    """eval: evaluate `cfg.model` on `cfg.data.eval`; writes report.json / report.md / generations.jsonl to `out`."""
    from mmrl.eval.evaluate import evaluate_config

    if not cfg.data.eval:
        raise UserError(f"{where}: data.eval is empty; give a build-data step args.eval_n, or set data.eval")
    try:
        report = evaluate_config(cfg, out, progress=cfg.trainer.progress, info={"label": label})
    finally:
        _release_memory()
    # completion_length: the answers' mean length in tokens (Vision-R1 compares reasoning length across arms)
    metrics = {"accuracy": report.get("accuracy"), "n": report.get("n"),
               "completion_length": report.get("completion_length")}
    return StepResult(outputs={"report": str((out / "report.json").resolve()), "model": cfg.model.name_or_path,
                               "label": label}, metrics=metrics)
