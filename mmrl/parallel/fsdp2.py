"""FSDP2: torch's `fully_shard` on the training forward (the process group's backend: NCCL on GPUs, gloo on CPU).
Parameters, gradients once reduced, and the optimizer state are sharded over the processes.

How it meets processes that run different numbers of forwards per optimizer step (`engine.py`):
- between optimizer steps the parameters are kept gathered (one all-gather per optimizer step, by every process):
  rollouts and the no-grad forwards call the policy's submodules directly, and a per-forward all-gather would be a
  collective only some processes reach;
- micro-batches run with gradient sync off; the synchronising pass at the optimizer step turns it on, so its backward
  reduce-scatters the accumulated gradients: each process keeps its shard of the mean;
- the KL reference copy is sharded like the policy, as its own root, and gathered once per step for its forwards.
Checkpoints stay plain Hugging Face directories: weights and optimizer state are gathered through
torch.distributed.checkpoint's full-state-dict API (every process calls) and scattered back on resume.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard

from mmrl.checkpoints.store import read_checkpoint_weights
from mmrl.parallel.distributed import DistInfo
from mmrl.parallel.engine import POLICY_PREFIX, TrainingEngine, policy_weights, zero_missing_gradients

GATHER_TO_CPU = StateDictOptions(full_state_dict=True, cpu_offload=True)


class FSDP2Engine(TrainingEngine):
    """The training forward under `fully_shard` (see `TrainingEngine` for the calls)."""

    name = "fsdp2"
    whole_model_per_process = False

    def __init__(self, policy: torch.nn.Module, dist_info: DistInfo) -> None:
        super().__init__(policy, dist_info)
        for tensor in list(self.module.parameters()) + list(self.module.buffers()):
            dist.broadcast(tensor.data, src=0)  # start from rank 0's weights, as DDP does
        self.wrapped = fully_shard(self.module, reshard_after_forward=False)
        self.wrapped.set_reshard_after_backward(False)
        self.wrapped.set_requires_gradient_sync(False)
        self.reference_root: Any = None  # the sharded frozen reference copy (`shard_reference`)

    def start(self, optimizer: torch.optim.Optimizer | None = None, max_grad_norm: float | None = None) -> None:
        self.wrapped.unshard()  # the optimizer took the shards; the first rollout reads whole parameters

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.wrapped(*args, **kwargs)

    def sync_gradients(self, params: list[torch.nn.Parameter]) -> None:
        self.wrapped.set_requires_gradient_sync(True)
        self.wrapped.set_reshard_after_backward(True)
        self.wrapped(sync_only=True).backward()  # reduce-scatter: each process keeps its shard of the mean
        self.wrapped.set_requires_gradient_sync(False)
        self.wrapped.set_reshard_after_backward(False)
        zero_missing_gradients(params)

    def after_step(self) -> None:
        self.wrapped.unshard()  # the next rollout reads whole parameters

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        with self._sharded():
            return get_optimizer_state_dict(self.wrapped, optimizer, options=GATHER_TO_CPU)

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """Each process takes its shards of the whole state."""
        with self._sharded():
            set_optimizer_state_dict(
                self.wrapped, optimizer, optim_state_dict=state, options=StateDictOptions(full_state_dict=True)
            )

    def full_weights(self) -> dict[str, torch.Tensor]:
        with self._sharded():
            return policy_weights(get_model_state_dict(self.wrapped, options=GATHER_TO_CPU))

    def load_weights(self, path: Path) -> bool:
        """Read the checkpoint's whole weights (or LoRA adapter) as one process does, then scatter them into this
        process's shards."""
        # as one process reads them: the live config (never the checkpoint's config.json), damage in one line
        whole, strict = read_checkpoint_weights(self.module.inner.policy, Path(path))
        with self._sharded():
            set_model_state_dict(
                self.wrapped,
                {POLICY_PREFIX + k: v for k, v in whole.items()},
                options=StateDictOptions(full_state_dict=True, strict=strict),
            )
        return True

    @contextmanager
    def _sharded(self) -> Iterator[None]:
        """The parameters as shards for the duration (what torch.distributed.checkpoint reads and writes), whole
        again after."""
        self.wrapped.reshard()
        try:
            yield
        finally:
            self.wrapped.unshard()

    def shard_reference(self, reference: Any) -> Any:
        """A frozen reference copy (`reference.model`) is sharded like the policy, as its own FSDP root (no gradient,
        no optimizer); its parameters are whole only inside `reference_gathered`. A reference that shares the
        policy's weights (LoRA: adapter disabled) needs nothing: the policy's parameters are whole between steps."""
        if reference is None or reference.shares_weights:
            return reference
        model = reference.model
        model.requires_grad_(False)
        # Never resharded by a forward: processes run different numbers of reference forwards per step, and an
        # all-gather per forward would be a collective only some of them reach.
        self.reference_root = fully_shard(model, reshard_after_forward=False)
        return reference

    @contextmanager
    def reference_gathered(self) -> Iterator[None]:
        """One all-gather on entry, freed on exit; every process enters once per step, whatever number of reference
        forwards it runs inside."""
        if self.reference_root is None:
            yield
            return
        self.reference_root.unshard()
        try:
            yield
        finally:
            self.reference_root.reshard()
