"""The model's vision encoder, and a counter of its calls (rollouts, the update and the benchmark read it)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from mmrl.models.prefix import unwrap


def vision_module(model: Any) -> torch.nn.Module | None:
    """The model's vision encoder (Qwen-VL `visual`, LLaVA/Gemma `vision_tower`), or None."""
    inner = unwrap(model)
    for path in ("model.visual", "visual", "model.vision_tower", "vision_tower"):
        obj = inner
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, torch.nn.Module):
            return obj
    return None


@contextlib.contextmanager
def count_vision(module: torch.nn.Module | None, counters: dict[str, Any]) -> Iterator[None]:
    """Count, while the block runs, calls of the vision encoder and the images it encoded (rows of `grid_thw`)."""
    counters.setdefault("vision_encoder_calls", 0)
    counters.setdefault("images_encoded", 0)
    if module is None:
        yield
        return

    def hook(_module: Any, args: tuple, kwargs: dict, _out: Any) -> None:
        counters["vision_encoder_calls"] += 1
        grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        counters["images_encoded"] += int(grid.shape[0]) if isinstance(grid, torch.Tensor) else 1

    handle = module.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
