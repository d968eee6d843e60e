"""Distributed glue on top of `accelerate launch` (which starts the processes; see configs/accelerate/).

The policy's training forward is one module, `mmrl.models.training_forward.GroupForward`; with several processes it
is wrapped in torch's DistributedDataParallel (`TrainingEngine`), which averages the gradients — there is no
hand-written gradient all-reduce. How the wrapper meets the RL update, whose processes may run different numbers of
forwards per optimizer step (uneven group counts, zero-advantage groups skipped):
- every micro-batch forward/backward runs under `no_sync()` (gradients accumulate locally, no collective);
- before each optimizer step every process runs ONE synchronising pass through the wrapper: a forward whose output is
  0 x (every trainable parameter), whose backward adds exactly 0 to each gradient and makes DDP all-reduce (average)
  the accumulated gradients. Each process thus reaches the same collectives in the same order, whatever it skipped.
- `broadcast_buffers=False`: a per-forward buffer broadcast would be a collective in the uneven part.
DeepSpeed ZeRO-2 (`mmrl.parallel.zero`) follows the same pattern with its own engine: its per-backward reduction is
held back between optimizer steps, and the synchronising pass at the step is the one gradient reduction.

Waiting for the main process. The main process alone evaluates and writes checkpoints while the others wait for it.
A wait inside an NCCL collective is killed by NCCL's watchdog after the process group's timeout (10 minutes by
default), which a long evaluation or a large checkpoint exceeds; so `barrier` and `all_gather_objects` (the waits,
and the object gathers, which pickle on the host anyway) go through a second, CPU (gloo) group whose timeout is
`MAIN_ALONE_TIMEOUT`. Gradient collectives stay on the default group.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from mmrl.parallel.host_group import host_group
from mmrl.parallel.process_exit import exit_process as exit_process  # re-exported: callers end a launch's process here
from mmrl.parallel.process_exit import joined_a_group


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_pref: str = "auto") -> DistInfo:
    """Join the process group `accelerate launch` prepared (no-op for one process); end such a process with
    `exit_process`."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_pref != "cpu"
    if device_pref == "cuda" and not torch.cuda.is_available():
        from mmrl.errors import UserError

        raise UserError("trainer.device: 'cuda' was asked for but no CUDA device is visible; use auto or cpu")
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        joined_a_group()
    if world > 1:
        host_group()  # made now, at the same point on every process (new_group is itself a collective)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device)


def stream_seed(seed: int, stage: int, draw_index: int) -> int:
    """The seed of one prompt's sampling stream, from the run seed, the stage and the prompt's global draw index (its
    position in the run's prompt order, the same on every process count; it is checkpointed with the sampler, so a
    resume continues the same streams). A hash, so neighbouring prompts get unrelated streams.

    >>> stream_seed(0, 0, 5) == stream_seed(0, 0, 5) != stream_seed(0, 0, 6)
    True
    """
    digest = hashlib.sha256(f"mmrl-stream:{seed}:{stage}:{draw_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def collective_device() -> torch.device:
    """The device collectives must use in this process: its CUDA device under NCCL (which rejects CPU tensors),
    else the CPU (gloo, or no process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(value: float | torch.Tensor, world_size: int) -> float:
    """Sum of a number over all processes (float64, on the process group's device)."""
    tensor = torch.as_tensor(value, dtype=torch.float64, device=collective_device())
    if world_size > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor)


def all_reduce_sum_tensor(tensor: torch.Tensor, world_size: int) -> torch.Tensor:
    """Element-wise sum of a tensor over all processes in one collective; returned on the tensor's own device."""
    if world_size <= 1:
        return tensor
    buf = tensor.to(device=collective_device(), dtype=torch.float64).clone()
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(device=tensor.device, dtype=tensor.dtype)


def all_gather_objects(obj: Any, world_size: int) -> list[Any]:
    """`obj` of every process, in rank order (through the host group: a process may wait here for the main one)."""
    if world_size <= 1:
        return [obj]
    out: list[Any] = [None] * world_size
    dist.all_gather_object(out, obj, group=host_group())
    return out


def barrier(world_size: int) -> None:
    """Wait for every process (through the host group, so waiting for the main process's save never times out)."""
    if world_size > 1:
        dist.barrier(group=host_group())


class _SyncPass(torch.nn.Module):
    """Wraps the training forward so the wrapper's forward also offers the synchronising pass (see the module doc)."""

    def __init__(self, forward: torch.nn.Module) -> None:
        super().__init__()
        self.inner = forward

    def forward(self, *args: Any, sync_only: bool = False, scale: float = 0.0, **kwargs: Any) -> torch.Tensor:
        if sync_only:  # `scale` nan: poisons every gradient (how a DeepSpeed step is made to skip)
            params = [p for p in self.inner.parameters() if p.requires_grad]
            return torch.stack([p.sum() * scale for p in params]).sum()
        return self.inner(*args, **kwargs)


def engine_from_launch() -> str:
    """The engine the `accelerate launch` preset asked for, from the environment accelerate gives its workers:
    `fsdp2` (distributed_type FSDP, fsdp_version 2), `deepspeed`, else `ddp`."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        return "deepspeed"
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        if os.environ.get("FSDP_VERSION", "1") != "2":
            from mmrl.errors import UserError

            raise UserError("accelerate config: FSDP needs fsdp_config.fsdp_version: 2 (torch's fully_shard); see "
                            "configs/accelerate/fsdp.yaml")
        return "fsdp2"
    return "ddp"


class TrainingEngine:
    """The policy's training forward, data-parallel when several processes run.

    `engine.forward(...)` runs `GroupForward` (through the wrapper with gradient sync off); `engine.sync_gradients()`
    averages the accumulated gradients over processes (one pass through the wrapper) and gives every trainable
    parameter a gradient (0 where its forward was skipped); `engine.after_step()` runs after the optimizer step.
    With one process these are plain calls.

    FSDP2 (`fully_shard` on the process group, gloo on CPU): parameters, gradients after the sync pass and the
    optimizer state are sharded; between optimizer steps the parameters are kept gathered (one all-gather per
    optimizer step, by every process), because rollouts and the no-grad forwards call the policy's submodules
    directly and because processes run different numbers of forwards per step (a per-forward all-gather would be a
    collective only some processes reach).
    """

    def __init__(self, policy: torch.nn.Module, dist_info: DistInfo, engine: str | None = None) -> None:
        from mmrl.models.training_forward import GroupForward

        self.world_size = dist_info.world_size
        self.module = _SyncPass(GroupForward(policy))
        self.name = (engine or engine_from_launch()) if self.world_size > 1 else "single"
        self.wrapped: torch.nn.Module = self.module
        self.zero: Any = None  # DeepSpeed: the `mmrl.parallel.zero.ZeroEngine`, built in `start` (it needs the optimizer)
        self.reference_root: Any = None  # FSDP2: the sharded frozen reference copy (`shard_reference`)
        if self.name == "ddp":
            device_ids = [dist_info.device.index] if dist_info.device.type == "cuda" else None
            # DDP broadcasts rank 0's parameters and buffers at construction: every rank starts from the same weights.
            self.wrapped = torch.nn.parallel.DistributedDataParallel(
                self.module, device_ids=device_ids, broadcast_buffers=False, find_unused_parameters=False)
        elif self.name == "fsdp2":
            from torch.distributed.fsdp import fully_shard

            for tensor in list(self.module.parameters()) + list(self.module.buffers()):
                dist.broadcast(tensor.data, src=0)  # start from rank 0's weights, as DDP does
            self.wrapped = fully_shard(self.module, reshard_after_forward=False)
            self.wrapped.set_reshard_after_backward(False)
            self.wrapped.set_requires_gradient_sync(False)

    def start(self, optimizer: torch.optim.Optimizer | None = None, max_grad_norm: float | None = None) -> None:
        """After the optimizer took the (sharded) parameters: gather them for the first rollout. DeepSpeed: hand the
        optimizer to its engine (which then owns clipping and the step: see `step`)."""
        if self.name == "deepspeed":
            from mmrl.parallel.zero import ZeroEngine

            self.zero = ZeroEngine(self.module, optimizer, max_grad_norm)
        self.after_step()

    def step(self, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], loss_value: float,
             max_grad_norm: float | None) -> tuple[float, bool]:
        """Average the gradients over processes, clip, and step unless the loss or grad norm is non-finite; returns
        (grad_norm, stepped). Every process calls it once per optimizer step."""
        if self.zero is not None:
            return self.zero.step(loss_value)
        from mmrl.optim import guarded_step

        self.sync_gradients(params)
        return guarded_step(optimizer, params, loss_value, max_grad_norm)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.zero is not None:
            return self.zero.forward(*args, **kwargs)
        if self.name == "ddp":
            with self.wrapped.no_sync():
                return self.wrapped(*args, **kwargs)
        return self.wrapped(*args, **kwargs)

    def sync_gradients(self, params: list[torch.nn.Parameter]) -> None:
        if self.name == "fsdp2":
            self.wrapped.set_requires_gradient_sync(True)
            self.wrapped.set_reshard_after_backward(True)
            self.wrapped(sync_only=True).backward()  # reduce-scatter: each process keeps its shard of the mean
            self.wrapped.set_requires_gradient_sync(False)
            self.wrapped.set_reshard_after_backward(False)
        elif self.name == "ddp":
            self.wrapped(sync_only=True).backward()
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer's whole state, for a checkpoint. FSDP2: every process must call (the state is gathered
        from the shards through torch.distributed.checkpoint's full-state-dict API)."""
        if self.zero is not None:
            return self.zero.optimizer_state()
        if self.name != "fsdp2":
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        self.wrapped.reshard()
        try:
            return get_optimizer_state_dict(self.wrapped, optimizer,
                                            options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        finally:
            self.wrapped.unshard()

    def full_weights(self) -> dict[str, torch.Tensor] | None:
        """FSDP2: the policy's whole state dict on the CPU, gathered from the shards (every process must call);
        None for the other engines, whose model holds whole weights (DeepSpeed: a copy, see `ZeroEngine`)."""
        if self.zero is not None:
            return self.zero.full_weights()
        if self.name != "fsdp2":
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        self.wrapped.reshard()
        try:
            whole = get_model_state_dict(self.wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        finally:
            self.wrapped.unshard()
        prefix = "inner.policy."
        return {k[len(prefix):]: v for k, v in whole.items() if k.startswith(prefix)}

    def load_weights(self, path: Any) -> bool:
        """FSDP2: load a checkpoint's whole weights (a plain HF directory) into this process's shards; returns False
        for the other engines, whose model loads them directly (`mmrl.checkpoints.store.load_model_weights`)."""
        if self.name != "fsdp2":
            return False
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        from mmrl.checkpoints.store import read_checkpoint_weights

        # as one process reads them: the live config (never the checkpoint's config.json), damage in one line
        whole, strict = read_checkpoint_weights(self.module.inner.policy, Path(path))
        self.wrapped.reshard()
        set_model_state_dict(self.wrapped, {f"inner.policy.{k}": v for k, v in whole.items()},
                             options=StateDictOptions(full_state_dict=True, strict=strict))
        self.wrapped.unshard()
        return True

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """Restore the optimizer (FSDP2: each process takes its shards of the whole state, through
        torch.distributed.checkpoint's full-state-dict API; DeepSpeed: each process takes its own partition). The
        state's kind was checked for this engine (`mmrl.checkpoints.store.check_optimizer_kind`)."""
        if self.zero is not None:
            self.zero.load_optimizer_state(state)
            return
        if self.name != "fsdp2":
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        self.wrapped.reshard()
        set_optimizer_state_dict(self.wrapped, optimizer, optim_state_dict=state,
                                 options=StateDictOptions(full_state_dict=True))
        self.wrapped.unshard()

    def after_step(self) -> None:
        if self.name == "fsdp2":
            self.wrapped.unshard()  # the next rollout reads whole parameters

    def shard_reference(self, reference: Any) -> Any:
        """Place the KL reference (`mmrl.rl.reference.ReferencePolicy`, or None) for this engine; returns it.

        FSDP2: a frozen copy (`reference.model`) is sharded like the policy, as its own FSDP root (no gradient, no
        optimizer); its parameters are whole only inside `reference_gathered`. DDP and DeepSpeed ZeRO-2 keep whole
        parameters on every process, so the replicated frozen copy is their equivalent (ZeRO-2 partitions only
        what an optimizer steps). A reference that shares the policy's weights (LoRA: adapter disabled) needs
        nothing: it reads the policy's parameters, which are whole between optimizer steps."""
        if reference is None or reference.shares_weights or self.name != "fsdp2":
            return reference
        from torch.distributed.fsdp import fully_shard

        model = reference.model
        model.requires_grad_(False)
        # Never resharded by a forward: processes run different numbers of reference forwards per step, and an
        # all-gather per forward would be a collective only some of them reach.
        self.reference_root = fully_shard(model, reshard_after_forward=False)
        return reference

    @contextmanager
    def reference_gathered(self) -> Iterator[None]:
        """FSDP2: the sharded reference's whole parameters for the duration (one all-gather on entry, freed on
        exit); every process enters once per step, whatever number of reference forwards it runs inside. Other
        engines: nothing to do."""
        if self.reference_root is None:
            yield
            return
        self.reference_root.unshard()
        try:
            yield
        finally:
            self.reference_root.reshard()
