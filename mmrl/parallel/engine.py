"""The training engine: how the policy's training forward meets the processes of a launch. One interface
(`TrainingEngine`), one class per strategy, each in its own file: `single.py` (one process), `ddp.py` (torch's
DistributedDataParallel), `fsdp2.py` (torch's `fully_shard`), `zero.py` (DeepSpeed ZeRO-2); `launch.make_engine`
picks one from the `accelerate launch` preset.

Why the strategies drive their wrappers by hand rather than through accelerate's `prepare`/`backward`/`accumulate`:
mmrl's processes run different numbers of micro-batch forwards per optimizer step (uneven group counts, groups with
zero advantages skipped, token-budget splits), and a collective that only some processes reach hangs the run. So
every strategy
- runs each micro-batch with gradient reduction off (gradients accumulate locally, no collective);
- before each optimizer step runs ONE synchronising pass through its wrapper on every process (`SyncPass`): a forward
  whose output is 0 x (every trainable parameter), whose backward adds exactly 0 to each gradient and makes the
  wrapper reduce (average) the accumulated gradients. Every process reaches the same collectives in the same order,
  whatever it skipped. docs/distributed.md weighs padding every rank to the same count instead (measured).

The policy's training forward is one module, `mmrl.models.training_forward.GroupForward`; every strategy wraps
`SyncPass(GroupForward(policy))`, so the policy's own state-dict keys carry `POLICY_PREFIX` inside the wrapper.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from mmrl.models.training_forward import GroupForward
from mmrl.optim import guarded_step
from mmrl.parallel.distributed import DistInfo

POLICY_PREFIX = "inner.policy."  # the policy's keys in the state dict of `SyncPass(GroupForward(policy))`


class SyncPass(torch.nn.Module):
    """The training forward, whose wrapper's forward also offers the synchronising pass (see the module doc)."""

    def __init__(self, forward: torch.nn.Module) -> None:
        super().__init__()
        self.inner = forward

    def forward(self, *args: Any, sync_only: bool = False, scale: float = 0.0, **kwargs: Any) -> torch.Tensor:
        if sync_only:  # `scale` nan: poisons every gradient (how a DeepSpeed step is made to skip)
            params = [p for p in self.inner.parameters() if p.requires_grad]
            return torch.stack([p.sum() * scale for p in params]).sum()
        return self.inner(*args, **kwargs)


def policy_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The policy's entries of a `SyncPass` state dict, under the policy's own names."""
    return {k[len(POLICY_PREFIX) :]: v for k, v in state.items() if k.startswith(POLICY_PREFIX)}


def zero_missing_gradients(params: list[torch.nn.Parameter]) -> None:
    """Give every trainable parameter a gradient: 0 where its forward was skipped on this process (the optimizer then
    treats it the same on every world size)."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)


class TrainingEngine:
    """The policy's training forward under one strategy. Every process calls, per optimizer step: `forward` once
    per micro-batch (each followed by the caller's backward), then `step` once; `after_step` after it.

    What the strategies share is written here once: the wrapped module (`module`), the default optimizer step
    (`sync_gradients`, then mmrl's guarded step) and, for a strategy whose processes each hold the whole model
    (one process, DDP), the checkpoint and reference methods, which then have nothing to gather or shard.
    """

    name: str  # recorded in the run's first metrics row: single, ddp, fsdp2, deepspeed
    owns_optimizer = False  # DeepSpeed: its engine partitions and steps the optimizer (no reset; state made in start)
    whole_model_per_process = True  # each process holds the whole, plain policy (not FSDP2's shards, not DeepSpeed's)

    def __init__(self, policy: torch.nn.Module, dist_info: DistInfo) -> None:
        self.world_size = dist_info.world_size
        self.module = SyncPass(GroupForward(policy))

    def start(self, optimizer: torch.optim.Optimizer | None = None, max_grad_norm: float | None = None) -> None:
        """Once the optimizer has taken the parameters (sharded ones under FSDP2), before the first rollout."""

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """One micro-batch's training forward (`GroupForward`'s arguments), gradients left unreduced."""
        raise NotImplementedError

    def sync_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Average the accumulated gradients over processes (every process calls once per optimizer step) and give
        every trainable parameter a gradient."""
        raise NotImplementedError

    def step(
        self,
        optimizer: torch.optim.Optimizer,
        params: list[torch.nn.Parameter],
        loss_value: float,
        max_grad_norm: float | None,
    ) -> tuple[float, bool]:
        """Average the gradients over processes, clip, and step unless the loss or grad norm is non-finite; returns
        (grad_norm, stepped). Every process calls it once per optimizer step."""
        self.sync_gradients(params)
        return guarded_step(optimizer, params, loss_value, max_grad_norm)

    def after_step(self) -> None:
        """After the optimizer step, before the next rollout."""

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer's whole state, for a checkpoint (every process calls)."""
        return optimizer.state_dict()

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """Restore the optimizer from a checkpoint's state, whose kind was checked for this engine
        (`mmrl.checkpoints.store.check_optimizer_kind`)."""
        optimizer.load_state_dict(state)

    def full_weights(self) -> dict[str, torch.Tensor] | None:
        """The policy's whole state dict on the CPU when the live model does not hold it whole (every process
        calls); None when `save_pretrained` can read the model itself."""
        return None

    def load_weights(self, path: Path) -> bool:
        """Load a checkpoint's weights where the live model cannot load them itself; False: let the model load them
        (`mmrl.checkpoints.store.load_model_weights`)."""
        return False

    def shard_reference(self, reference: Any) -> Any:
        """Place the KL reference (`mmrl.rl.reference.ReferencePolicy`, or None) for this engine; returns it. Whole
        weights on every process need nothing: the replicated frozen copy (or, under LoRA, the policy with its
        adapter off) is what every process reads."""
        return reference

    @contextmanager
    def reference_gathered(self) -> Iterator[None]:
        """The reference's whole parameters for the duration (every process enters once per step)."""
        yield
