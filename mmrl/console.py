"""What a person sees in the terminal: libraries kept quiet (unless `--verbose`), and an end-of-run summary.

mmrl shows one progress bar with ETA per phase (train, eval) on the main process; library bars (weights loading,
shard writing, dataset maps) and deprecation warnings from transformers, torch, accelerate and datasets would bury it,
so `quiet_libraries()` silences them before those libraries are imported. `run_summary()` is printed once, by the
main process, at the end of `mmrl train` / `mmrl sft`.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import warnings
from pathlib import Path
from typing import Any

LIBRARIES = ("transformers", "torch", "accelerate", "datasets", "huggingface_hub", "tqdm", "PIL", "peft")


def is_main_process() -> bool:
    """Rank 0 of a `torchrun` / `accelerate launch` job, or a single process."""
    return os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0"


def quiet_libraries(verbose: bool = False) -> None:
    """Silence library progress bars, advisory logs and deprecation warnings (`verbose=True`: leave them on)."""
    if verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "info")
        return
    for key, value in (("TRANSFORMERS_VERBOSITY", "error"), ("HF_HUB_VERBOSITY", "error"),
                       ("DATASETS_VERBOSITY", "error"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
                       ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(key, value)
    for category in (FutureWarning, DeprecationWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    for library in LIBRARIES:
        warnings.filterwarnings("ignore", module=rf"{library}(\.|$)")
    # DeepSpeed (the dev and deepspeed extras) is imported by transformers and logs to stdout at its own level, reset
    # when it creates its logger; a filter survives that: "Setting accelerator to CPU" on every command without a GPU
    logging.getLogger("DeepSpeed").addFilter(_errors_only)
    # What still gets through (mmrl's own notes) is one line, without Python's file:line and source echo.
    warnings.formatwarning = lambda message, category, *_args, **_kw: f"warning: {message}\n"
    # Libraries imported already (tests, the Python API) read the environment at import time: tell them directly.
    import sys

    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


def _last(rows: list[dict[str, Any]], key: str) -> float | None:
    for row in reversed(rows):
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


def run_summary(run_dir: str | os.PathLike, seconds: float | None = None, eval_data: str | None = None) -> str:
    """The end-of-run block: steps, time, final reward and accuracy, best eval, last checkpoint, next commands.

    >>> import tempfile, json, pathlib
    >>> run = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward/total": 0.5, "accuracy": 0.25}) + "\\n")
    >>> print(run_summary(run, seconds=3.0).splitlines()[1])
      steps 1 in 3.0s · final reward 0.500 · accuracy 0.250
    """
    from mmrl.checkpoints.store import find_latest

    run = Path(run_dir)
    path = run / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    steps = int(rows[-1].get("step", len(rows))) if rows else 0
    spent = seconds if seconds is not None else sum(float(r.get("time/step", 0) or 0) for r in rows)
    reward, accuracy = _last(rows, "reward/total"), _last(rows, "accuracy")
    line = f"  steps {steps} in {_duration(spent)}"
    if reward is not None or accuracy is not None:
        line += f" · final reward {_fmt(reward)} · accuracy {_fmt(accuracy)}"
    if reward is None and _last(rows, "loss") is not None:
        line += f" · final loss {_fmt(_last(rows, 'loss'))}"
    lines = [f"run directory: {run}", line]
    evals = [(float(r["eval/accuracy"]), r.get("step")) for r in rows
             if isinstance(r.get("eval/accuracy"), (int, float))]
    if evals:
        best, at = max(evals, key=lambda pair: pair[0])
        lines.append(f"  best eval accuracy {best:.3f} at step {at}")
    latest = find_latest(run) if (run / "checkpoints").is_dir() else None
    if latest is not None:
        lines.append(f"  last checkpoint: {latest}")
    lines.append("next:")
    data = f" --data {shlex.quote(eval_data)}" if eval_data else " --data EVAL.jsonl"
    quoted = shlex.quote(str(run))
    if latest is not None:
        lines.append(f"  mmrl eval --model {quoted}{data}     # latest checkpoint -> {run / 'eval'}")
    lines.append(f"  mmrl plot {quoted}")
    if latest is not None:
        lines.append(f"  mmrl export {shlex.quote(str(latest))} exported/{run.name}")
    return "\n".join(lines)


def print_summary(run_dir: str | os.PathLike, seconds: float, cfg: Any = None) -> None:
    """Print `run_summary` once, on the main process (every rank of a DDP job returns from training)."""
    if not is_main_process():
        return
    eval_data = cfg.data.eval[0].path if cfg is not None and cfg.data.eval else None
    print(run_summary(run_dir, seconds, eval_data=eval_data), flush=True)
