"""The process group `accelerate launch` prepared, and the collectives mmrl's code calls outside the training
engine (sums and gathers of numbers and objects; the gradients are the engine's: `mmrl.parallel.engine`).

Waiting for the main process. The main process alone evaluates and writes checkpoints while the others wait for it.
A wait inside an NCCL collective is killed by NCCL's watchdog after the process group's timeout (10 minutes by
default), which a long evaluation or a large checkpoint exceeds; so `barrier` and `all_gather_objects` (the waits,
and the object gathers, which pickle on the host anyway) go through a second, CPU (gloo) group whose timeout is
`MAIN_ALONE_TIMEOUT`. Gradient collectives stay on the default group.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
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
