"""Run logging: one JSON object per step in `metrics.jsonl`, TensorBoard scalars, samples, a progress bar, phase timers."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mmrl.faults import fault_point


class PhaseTimer:
    """Named wall-clock timers for the phases of one step (`with timer("rollout"): ...`)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        return {f"time/{name}": round(value, 6) for name, value in self.seconds.items()}


def _clean(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "numel", lambda: 1)() == 1:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunLogger:
    """Writes metrics of the main process; other ranks get a logger that does nothing."""

    def __init__(self, run_dir: str | os.PathLike, report_to: list[str], enabled: bool = True,
                 total_steps: int | None = None, progress: bool = True, start_step: int = 0) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._tb = None
        self._bar = None
        self._trackers: list = []
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        keep_rows_up_to(self.run_dir / "metrics.jsonl", start_step)
        self._metrics = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8")
        if "tensorboard" in report_to:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tb"))
        from mmrl.runs.trackers import open_trackers

        saved = self.run_dir / "config.yaml"  # written by start_run before the logger: the trackers' run config
        self._trackers = open_trackers(report_to, self.run_dir,
                                       _read_yaml(saved) if saved.exists() and set(report_to) - {"jsonl", "tensorboard"}
                                       else None)
        self._plain: PlainProgress | None = None
        if progress and total_steps and not is_terminal(sys.stderr):
            # tqdm draws only on a terminal: under nohup or slurm a 70-minute run would print nothing at all
            self._plain = PlainProgress(total_steps, start_step)
        elif progress and total_steps:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", file=sys.stderr,
                             dynamic_ncols=True, disable=None)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        line = json.dumps(record) + "\n"
        half = len(line) // 2
        self._metrics.write(line[:half])
        self._metrics.flush()
        fault_point("log.partial")  # crash tests: die with half a row on disk
        self._metrics.write(line[half:])
        self._metrics.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, step)
        if self._trackers:
            from mmrl.runs.trackers import numeric

            for tracker in self._trackers:
                tracker.log(step, numeric(record))
        if self._plain is not None:
            self._plain.update(step, record)
        if self._bar is not None:
            shown = {k: record[k] for k in ("loss", "reward/total", "accuracy") if record.get(k) is not None}
            self._bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in shown.items()}, refresh=False)
            self._bar.update(step - self._bar.n)

    def write_samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        """Completions with their rewards, for a person to read: `samples/step-N.jsonl`."""
        if not self.enabled or not rows:
            return
        out = self.run_dir / "samples"
        out.mkdir(exist_ok=True)
        with open(out / f"step-{step}.jsonl", "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps({k: _clean(v) for k, v in row.items()}, default=str) + "\n")

    def event(self, message: str) -> None:
        """A one-line notice (stage switch, skipped step) that should not break the progress bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr)

    def close(self) -> None:
        if not self.enabled:
            return
        self._metrics.close()
        for tracker in self._trackers:
            tracker.close()
        if self._tb is not None:
            self._tb.close()
        if self._bar is not None:
            self._bar.close()


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced by an object without a file
        return False


SHOWN = {"loss": "loss", "reward/total": "reward", "accuracy": "accuracy"}


class PlainProgress:
    """Progress as plain lines on stderr (step, rate, ETA, reward), for output that goes to a file: the first step,
    every 5% of the run, and the last step, so a log holds about 20 of them whatever the run's length."""

    def __init__(self, total_steps: int, start_step: int = 0, label: str = "train", unit: str = "step") -> None:
        self.total = total_steps
        self.start_step = start_step
        self.label, self.unit = label, unit
        self.every = max(1, total_steps // 20)
        self.started = time.monotonic()
        self.n = start_step
        # the last step printed and what its line showed: a step logged again prints again only for something new
        self.printed: tuple[int, frozenset[str]] | None = None

    def update(self, step: int, record: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> None:
        """`step` units are done (the trainers' step number); prints when this step is one of the shown ones.
        `extra` (a builder's `failed` count) is shown after the metrics."""
        before, self.n = self.n, step
        keys = frozenset(k for k in SHOWN if isinstance((record or {}).get(k), (int, float)))
        if self.printed is not None and step == self.printed[0] and keys <= self.printed[1]:
            return
        if not (before == self.start_step or step // self.every > before // self.every or step >= self.total):
            return
        done = step - self.start_step
        per_unit = (time.monotonic() - self.started) / max(done, 1)
        left = max(self.total - step, 0) * per_unit
        shown = "".join(f", {name} {record[key]:.3g}" for key, name in SHOWN.items() if key in keys)
        shown += "".join(f", {name} {value}" for name, value in (extra or {}).items())
        print(f"{self.label}: {self.unit} {step}/{self.total} ({100 * step // max(self.total, 1)}%), {per_unit:.2f} "
              f"s/{self.unit}, ETA {_duration(left)}{shown}", file=sys.stderr, flush=True)
        self.printed = (step, keys)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **shown: Any) -> None:
        pass

    def close(self) -> None:
        pass


class _PlainBar(_NoBar):
    def __init__(self, plain: PlainProgress) -> None:
        self.plain = plain
        self.postfix: dict[str, Any] = {}

    def update(self, n: int = 1) -> None:
        self.plain.update(self.plain.n + n, extra=self.postfix)

    def set_postfix(self, refresh: bool = True, **shown: Any) -> None:
        self.postfix = shown  # shown from the next line on, as tqdm shows it from its next redraw


def item_progress(total: int, label: str, enabled: bool = True) -> Any:
    """A progress bar over `total` items (`update`, `set_postfix`, `close`): tqdm on a terminal, plain lines with an
    ETA when stderr goes to a file (tqdm's redraws would fill a log with carriage returns), nothing when disabled."""
    if not enabled:
        return _NoBar()
    if not is_terminal(sys.stderr):
        return _PlainBar(PlainProgress(total, label=label, unit="item"))
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=label, unit="item", dynamic_ncols=True, file=sys.stderr)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _parse_rows(text: str) -> list[dict[str, Any]]:
    """Rows of a metrics file; a last line cut short by a killed process is dropped (it is redone on resume)."""
    lines = [line for line in text.splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise
    return rows


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    return _parse_rows(path.read_text(encoding="utf-8")) if path.exists() else []


def keep_rows_up_to(path: Path, last_step: int) -> None:
    """Drop the rows after `last_step` (an attempt that never reached a checkpoint: a resume redoes them).

    The kept rows go to a temporary file that replaces the old one in a single rename, so a process killed at any
    moment leaves either the old file or the new one, never a half-written one.
    """
    if not path.exists():
        return
    text = path.read_text(encoding="utf-8")
    kept = [row for row in _parse_rows(text) if row.get("step", 0) <= last_step]
    new_text = "".join(json.dumps(row) + "\n" for row in kept)
    if new_text == text:
        return
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(new_text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
