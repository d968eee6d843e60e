"""Which training engine a launch asked for, and the factory that builds it (`make_engine`).

`accelerate launch` starts the processes and passes the preset's choices to its workers in the environment; the
strategy classes live one per file (`single.py`, `ddp.py`, `fsdp2.py`, `zero.py`) behind `engine.TrainingEngine`.
"""

from __future__ import annotations

import os

import torch

from mmrl.errors import UserError
from mmrl.parallel.distributed import DistInfo
from mmrl.parallel.engine import TrainingEngine

ENGINES = ("single", "ddp", "fsdp2", "deepspeed")


def engine_from_launch() -> str:
    """The engine the `accelerate launch` preset asked for, from the environment accelerate gives its workers:
    `fsdp2` (distributed_type FSDP, fsdp_version 2), `deepspeed`, else `ddp`."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        return "deepspeed"
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        if os.environ.get("FSDP_VERSION", "1") != "2":
            raise UserError(
                "accelerate config: FSDP needs fsdp_config.fsdp_version: 2 (torch's fully_shard); see "
                "configs/accelerate/fsdp.yaml"
            )
        return "fsdp2"
    return "ddp"


def engine_name(dist_info: DistInfo) -> str:
    """`single` for one process, else what the launch asked for."""
    return engine_from_launch() if dist_info.world_size > 1 else "single"


def check_launch(dist_info: DistInfo, max_grad_norm: float | None) -> None:
    """What the launch asks for, checked before the model loads (DeepSpeed: installed, a preset mmrl supports)."""
    if engine_name(dist_info) == "deepspeed":
        from mmrl.parallel.zero import check_deepspeed

        check_deepspeed(max_grad_norm)


def make_engine(policy: torch.nn.Module, dist_info: DistInfo, name: str | None = None) -> TrainingEngine:
    """The engine `name` (default: the launch's) around the policy's training forward. DDP, FSDP2 and DeepSpeed
    start every process from rank 0's weights. Each strategy's module is imported only when asked for (FSDP2's and
    DeepSpeed's imports take a while)."""
    name = name or engine_name(dist_info)
    if name == "single":
        from mmrl.parallel.single import SingleProcess as strategy
    elif name == "ddp":
        from mmrl.parallel.ddp import DDPEngine as strategy
    elif name == "fsdp2":
        from mmrl.parallel.fsdp2 import FSDP2Engine as strategy
    elif name == "deepspeed":
        from mmrl.parallel.zero import ZeRO2Engine as strategy
    else:
        raise ValueError(f"unknown training engine {name!r}; one of {', '.join(ENGINES)}")
    return strategy(policy, dist_info)
