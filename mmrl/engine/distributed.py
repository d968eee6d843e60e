"""Distributed glue on top of `accelerate launch` (which sets up the processes and the process group).

The policy is not wrapped in DistributedDataParallel: the shared-prefix forward calls the decoder and LM head
separately (two calls per backward), which DDP's reducer does not allow. Instead gradients are averaged across
processes after backward with one flattened all-reduce — the same arithmetic as DDP.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


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
    """Join the process group `accelerate launch` prepared (no-op for one process)."""
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
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device)


def all_reduce_gradients(parameters: list[torch.nn.Parameter], world_size: int) -> None:
    """Average gradients across processes (missing grads count as zeros so every rank reduces the same buffer)."""
    if world_size <= 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size
    offset = 0
    for p, g in zip(parameters, grads):
        n = g.numel()
        p.grad = flat[offset: offset + n].view_as(p).clone()
        offset += n


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
    if world_size <= 1:
        return [obj]
    out: list[Any] = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_parameters(module: torch.nn.Module, world_size: int) -> None:
    """Start every rank from rank 0's weights."""
    if world_size <= 1:
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=0)


def barrier(world_size: int) -> None:
    if world_size > 1:
        dist.barrier()
