"""Where a model's inputs live and in which precision it computes: the one place both are decided.

Device: a batch meets its model at one boundary (`to_model_device(batch, model)`, or `to_device` with the rollout
backend's device): prompts right after the processor encodes them; everything derived from a rollout (completions,
rewards, advantages) is created on the device the rollout ran on. Nothing downstream
assumes the CPU (NCCL, CUDA sampling generators and CUDA kernels all reject CPU tensors).

Precision (`model.dtype`): for training, weights and optimizer state stay float32 and the forward runs under bf16
autocast (mixed precision: AdamW steps of ~1e-6 relative size would round away in bf16 weights); weights never stepped
(inference-only loads, a LoRA run's frozen base) are themselves bf16. `compute_autocast(model)` is entered by every
forward entry point (rollout, log-probs, SFT, eval). Log-probs, advantages and losses are float32 whatever the
compute dtype.

>>> import torch
>>> batch = to_model_device({"input_ids": torch.ones(1, 3, dtype=torch.long), "n": 2}, torch.nn.Linear(2, 2))
>>> batch["input_ids"].device.type, batch["n"]
('cpu', 2)
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

COMPUTE_DTYPE_ATTR = "_mmrl_compute_dtype"


def _inner(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def model_device(model: Any) -> torch.device:
    """The device of the model's first parameter (CPU for a parameterless module)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def to_device(obj: Any, device: torch.device) -> Any:
    """Tensors in `obj` (a tensor, or a dict/list/tuple of them) moved to `device`; other values unchanged."""
    if isinstance(obj, torch.Tensor):
        if obj.device == device:
            return obj
        # Host -> device copies may overlap; a copy to the host must finish before anything reads it.
        return obj.to(device, non_blocking=device.type != "cpu")
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def to_model_device(batch: Any, model: Any) -> Any:
    """`batch` on `model`'s device: the boundary every encoded prompt or training batch crosses once."""
    return to_device(batch, model_device(model))


def set_compute_dtype(model: Any, dtype: torch.dtype) -> None:
    """Record the dtype the forward computes in (bf16 -> autocast around every forward entry point)."""
    setattr(_inner(model), COMPUTE_DTYPE_ATTR, dtype)


def compute_dtype(model: Any) -> torch.dtype:
    inner = _inner(model)
    dtype = getattr(inner, COMPUTE_DTYPE_ATTR, None)
    return dtype if dtype is not None else getattr(inner, "dtype", torch.float32)


def compute_autocast(model: Any) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on the model's device when its compute dtype is below its weights' dtype, else a no-op."""
    dtype = compute_dtype(model)
    weights = getattr(_inner(model), "dtype", torch.float32)
    if dtype == weights or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=model_device(model).type, dtype=dtype)
