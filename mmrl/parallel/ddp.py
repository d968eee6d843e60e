"""DDP: the training forward wrapped in torch's DistributedDataParallel, which averages the gradients (no
hand-written all-reduce). Every process holds the whole model.

How it meets processes that run different numbers of micro-batch forwards per optimizer step (`engine.py`): each
micro-batch runs under `no_sync()` (gradients accumulate locally, no collective); the synchronising pass at the
optimizer step is the one backward with sync on, so DDP all-reduces (averages) the accumulated gradients there, on
every process, in the same order. `broadcast_buffers=False`: a per-forward buffer broadcast would be a collective in
the uneven part.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from mmrl.parallel.distributed import DistInfo
from mmrl.parallel.engine import TrainingEngine, zero_missing_gradients


class DDPEngine(TrainingEngine):
    """The training forward under DistributedDataParallel (see `TrainingEngine` for the calls)."""

    name = "ddp"

    def __init__(self, policy: torch.nn.Module, dist_info: DistInfo) -> None:
        super().__init__(policy, dist_info)
        device_ids = [dist_info.device.index] if dist_info.device.type == "cuda" else None
        # DDP broadcasts rank 0's parameters and buffers at construction: every rank starts from the same weights.
        self.wrapped = DistributedDataParallel(
            self.module, device_ids=device_ids, broadcast_buffers=False, find_unused_parameters=False
        )

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        with self.wrapped.no_sync():
            return self.wrapped(*args, **kwargs)

    def sync_gradients(self, params: list[torch.nn.Parameter]) -> None:
        self.wrapped(sync_only=True).backward()  # the one all-reduce of this optimizer step
        zero_missing_gradients(params)
