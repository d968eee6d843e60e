"""Optimizer and learning-rate schedule from `optimizer:`; one guarded optimizer step shared by GRPO and SFT."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from mmrl.config.optim import OptimizerConfig


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def build_optimizer(params: list[torch.nn.Parameter], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    # `guarded_step` gives every trainable parameter a gradient (zeros where its forward was skipped or it is unused),
    # so every one gets AdamW state from the first step, and weight decay applies to all of them (as under FSDP or
    # DeepSpeed, whose flat buffers do the same); freeze what must not move. Resume loads the state dict whole.
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if cfg.name == "sgd":
        # Plain SGD: the update is linear in the gradient, so exactness tests see reduction-order noise unamplified.
        return torch.optim.SGD(groups, lr=cfg.lr)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=_fused_on_gpu(params))


def _fused_on_gpu(params: list[torch.nn.Parameter]) -> bool | None:
    """True when every parameter is a plain CUDA tensor: torch's fused AdamW then steps in one kernel per group,
    without the foreach path's temporary the size of the weights (14 GiB at 3B, the margin a step on an 80 GB card
    lacks). None elsewhere (torch's default: the CPU runs and their exactness tests keep the foreach step; FSDP2's
    sharded DTensors too)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch without DTensor: nothing is sharded
        DTensor = ()  # noqa: N806
    if params and all(p.device.type == "cuda" and not isinstance(p, DTensor) for p in params):
        return True
    return None


def allocate_state(optimizer: torch.optim.Optimizer) -> None:
    """Allocate AdamW's state (both moments of every parameter) now, exactly as its first step would make it.

    torch makes the state lazily, at the first step. A colocated vLLM engine checks the free GPU memory when it starts
    and takes its share then; state made after that check was memory the engine had counted as free, so the first
    wake-up after step 1 ran out of memory. Allocated before the engine starts, the check sees the trainer's whole
    footprint (and a run that cannot fit fails at start, in one line from vLLM). The state is what the first step
    finds: zero moments, step 0 (an lr-0 step makes it: parameters unchanged bit for bit). SGD keeps no state here.
    """
    if not isinstance(optimizer, torch.optim.AdamW) or optimizer.state:
        return
    lrs = [group["lr"] for group in optimizer.param_groups]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    for p in params:
        p.grad = torch.zeros_like(p)
    try:
        optimizer.step()
    finally:
        for group, lr in zip(optimizer.param_groups, lrs):
            group["lr"] = lr
        for p in params:
            p.grad = None
    for state in optimizer.state.values():
        state["step"] = torch.zeros_like(state["step"]) if isinstance(state["step"], torch.Tensor) else 0


def warmup_steps(cfg: OptimizerConfig, max_steps: int) -> int:
    """`warmup_steps` when set, else `warmup_ratio` of the run's real length (known only once SFT counts its epochs)."""
    return cfg.warmup_steps or int(round(cfg.warmup_ratio * max_steps))


def lr_factor(step: int, cfg: OptimizerConfig, max_steps: int) -> float:
    """Multiplier of cfg.lr at `step` (0-based): linear warm-up, then constant / cosine / linear decay to min_lr_ratio.

    >>> from mmrl.config.optim import OptimizerConfig
    >>> c = OptimizerConfig(lr=1.0, warmup_steps=2, schedule="linear")
    >>> [round(lr_factor(s, c, 6), 3) for s in range(6)]
    [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
    """
    warm = warmup_steps(cfg, max_steps)
    if warm and step < warm:
        return (step + 1) / warm
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, max_steps - warm)
    progress = min(1.0, (step - warm) / span)
    floor = cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return floor + (1 - floor) * (1 - progress)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    cfg: OptimizerConfig,
    max_steps: int | Callable[[], int],
    segment: Callable[[int], tuple[int, int]] | None = None,
):
    """LambdaLR over `max_steps`; pass a callable to have the schedule follow a run length that may still shrink
    (a stage ended early by `until_metric`): it is read at every scheduler step.

    `segment(step) -> (first step, length)` of the part of the run whose schedule holds `step` (stages that restart
    the schedule, `stages[].reset_optimizer`): the warm-up and decay then run over that part alone, from its start.
    """
    length = max_steps if callable(max_steps) else (lambda: max_steps)
    part = segment if segment is not None else (lambda step: (0, length()))

    def factor(step: int) -> float:
        start, steps = part(step)
        return lr_factor(step - start, cfg, steps)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def reset_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Forget every moment and step count: the next step is a fresh optimizer's first (AdamW's bias correction
    starts over), as when a stage is launched as a new run (Curr-ReFT). Parameters and learning rates stay."""
    optimizer.state.clear()


def guarded_step(
    optimizer: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    loss_value: float,
    max_grad_norm: float | None,
) -> tuple[float, bool]:
    """Clip, and step unless the loss or grad norm is non-finite; the gradients are already averaged over processes.

    A parameter without a gradient (its forward was skipped, e.g. zero-advantage groups) gets a zero gradient, on one
    process as on several: the optimizer then treats it the same on every world size (AdamW still applies momentum
    and weight decay), as TRL and verl do.
    Returns (grad_norm, stepped). A skipped step leaves the parameters and optimizer state untouched.
    """
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params if p.grad is not None]
    if grads:
        norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm else float("inf"))
        grad_norm = float(norm)
    else:
        grad_norm = 0.0
    stepped = math.isfinite(loss_value) and math.isfinite(grad_norm)
    if stepped:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, stepped
