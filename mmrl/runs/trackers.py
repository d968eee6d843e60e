"""Optional experiment trackers for `trainer.report_to`: `wandb` and `trackio` (neither is a dependency of mmrl).

Each is imported only when asked for; a missing package is a one-line error naming the `pip install`. Offline mode
is honoured: wandb reads `WANDB_MODE=offline` itself (and mmrl sets it when `HF_HUB_OFFLINE=1` and WANDB_MODE is
unset); trackio logs locally unless `TRACKIO_SPACE_ID` names a Space, and never pushes when `HF_HUB_OFFLINE=1`.
The project is `$WANDB_PROJECT` / `$TRACKIO_PROJECT` (default `mmrl`); the run is named after the run directory.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Protocol

from mmrl.errors import UserError

EXTERNAL = ("wandb", "trackio")


class Tracker(Protocol):
    def log(self, step: int, metrics: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise UserError(f"trainer.report_to: '{name}' is not installed; pip install {name} (or remove it from "
                        "trainer.report_to)") from None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


class WandbTracker:
    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        if _offline():
            os.environ.setdefault("WANDB_MODE", "offline")
        self.wandb = _import("wandb")
        self.run = self.wandb.init(project=os.environ.get("WANDB_PROJECT", "mmrl"), name=run_dir.name,
                                   dir=str(run_dir), config=config, reinit="finish_previous")

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


class TrackioTracker:
    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        self.trackio = _import("trackio")
        space = None if _offline() else os.environ.get("TRACKIO_SPACE_ID")
        self.trackio.init(project=os.environ.get("TRACKIO_PROJECT", "mmrl"), name=run_dir.name, config=config,
                          space_id=space, embed=False)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        self.trackio.log(metrics, step=step)

    def close(self) -> None:
        self.trackio.finish()


def open_trackers(report_to: list[str], run_dir: str | os.PathLike, config: dict[str, Any] | None = None) -> list:
    """The external trackers named in `report_to` (jsonl / tensorboard are the run logger's own)."""
    kinds = {"wandb": WandbTracker, "trackio": TrackioTracker}
    return [kinds[name](Path(run_dir), config or {}) for name in report_to if name in kinds]


def numeric(record: dict[str, Any]) -> dict[str, float]:
    """The scalar metrics of a row (trackers chart numbers; names and stage labels stay in metrics.jsonl)."""
    return {k: v for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
