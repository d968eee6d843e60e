"""One process: the training forward is called directly and there is nothing to average."""

from __future__ import annotations

from typing import Any

import torch

from mmrl.parallel.engine import TrainingEngine, zero_missing_gradients


class SingleProcess(TrainingEngine):
    """The training forward of a run with one process (see `TrainingEngine` for the calls)."""

    name = "single"

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.module(*args, **kwargs)

    def sync_gradients(self, params: list[torch.nn.Parameter]) -> None:
        zero_missing_gradients(params)
