"""The in-process rollout backends by `rollout.backend` name (`hf`, `vllm`), and how one is made and checked.

A backend's module is imported when it is chosen (vLLM only with its extra); this registry is what the trainer, the
evaluator, `mmrl.generation.load` and the config check (`mmrl.preflight`) ask.

>>> BACKENDS.names()
['hf', 'vllm']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from mmrl.generation.hf import DEFAULT_MAX_BATCH_ROWS, HFBackend, HFNaiveBackend, HFSharedPrefixBackend
from mmrl.models.placement import model_device
from mmrl.models.prefix import note_naive_fallback, supports_prefix_sharing
from mmrl.registry import Registry


def backend_device(backend: Any) -> torch.device:
    """Where a backend's outputs live: its model's device (CPU for backends without a local model)."""
    model = getattr(backend, "model", None)
    return model_device(model) if model is not None else torch.device("cpu")


def _hf_backend(
    model: Any, processor: Any, share_prompt: bool = True, data_cfg: Any = None, rollout_cfg: Any = None
) -> HFBackend:
    """The shared-prefix backend for Qwen2-VL/2.5-VL/3-VL (unless `share_prompt` is False), naive otherwise."""
    if share_prompt and supports_prefix_sharing(model):
        rows = getattr(rollout_cfg, "max_batch_rows", None) or DEFAULT_MAX_BATCH_ROWS
        return HFSharedPrefixBackend(model, processor, data_cfg, max_batch_rows=rows)
    if share_prompt:
        note_naive_fallback(model)
    return HFNaiveBackend(model, processor, data_cfg)


# In-process rollout backends by `rollout.backend` name.
BACKENDS: Registry[Callable[..., Any]] = Registry("rollout backend", "rollout.backend")
BACKENDS.add("hf", _hf_backend)


def _vllm_backend(
    model: Any, processor: Any, share_prompt: bool = True, data_cfg: Any = None, rollout_cfg: Any = None
) -> Any:
    """`rollout.backend: vllm` (the `vllm` extra): imported only when chosen; see `mmrl.generation.vllm_backend`."""
    from mmrl.generation.vllm_backend import make_vllm_backend

    return make_vllm_backend(model, processor, share_prompt=share_prompt, data_cfg=data_cfg, rollout_cfg=rollout_cfg)


def _require_vllm() -> None:
    from mmrl.generation.vllm_backend import require_vllm

    require_vllm()


_vllm_backend.preflight = _require_vllm  # type: ignore[attr-defined]
BACKENDS.add("vllm", _vllm_backend)


def check_backend(name: str) -> None:
    """Fail fast, before any model loads, when backend `name` cannot run here (its `preflight`, e.g. a missing extra)."""
    preflight = getattr(BACKENDS.get(name), "preflight", None)
    if preflight is not None:
        preflight()


def make_backend(
    model: Any,
    processor: Any,
    name: str = "hf",
    share_prompt: bool = True,
    data_cfg: Any = None,
    rollout_cfg: Any = None,
) -> HFBackend:
    """The rollout backend `name` over an in-process model (`hf`: see `_hf_backend`; `vllm`: `_vllm_backend`).
    `rollout_cfg` (the `rollout:` section) carries engine settings (vLLM's memory share and context length)."""
    return BACKENDS.get(name)(model, processor, share_prompt=share_prompt, data_cfg=data_cfg, rollout_cfg=rollout_cfg)


__all__ = ["BACKENDS", "backend_device", "check_backend", "make_backend"]
