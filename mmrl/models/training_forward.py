"""The training forward as one `nn.Module.forward` (what DDP / FSDP2 / ZeRO wrap), with activation checkpointing.

`GroupForward(policy)(prompt, completion_ids, completion_mask)` returns the [G, T] completion log-probs of one prompt's
group: the prompt (and its image) runs once, its keys/values are shared by the G completions, and only completion
positions reach the LM head (`mmrl.models.logprobs.completion_logprobs` does the work). Wrapping this module, rather
than the policy, puts the prompt pass, the completion pass and the LM head inside ONE forward, so DDP's reducer sees
one forward per backward.

Activation checkpointing under prefix sharing: see `mmrl.models.shared_cache`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from mmrl.models.logprobs import DEFAULT_CHUNK, completion_logprobs


class GroupForward(torch.nn.Module):
    """The policy's training forward: one prompt and its G completions in, completion log-probs [G, T] out.

    Holds the policy as a submodule (`self.policy`), so wrapping this module (DDP, FSDP2, ZeRO) wraps the policy's
    parameters; the whole group's computation is this one `forward`.

    >>> lp = GroupForward(policy)(prompt, completion_ids, completion_mask, temperature=0.9)  # doctest: +SKIP
    """

    def __init__(self, policy: torch.nn.Module) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, prompt: dict[str, Any], completion_ids: torch.Tensor, completion_mask: torch.Tensor,
                temperature: float = 1.0, chunk_size: int | None = None) -> torch.Tensor:
        return completion_logprobs(self.policy, prompt, completion_ids, completion_mask, temperature=temperature,
                                   chunk_size=chunk_size or DEFAULT_CHUNK)


def policy_of(model: Any) -> Any:
    """The policy under a `GroupForward` (itself possibly under DDP's `.module`)."""
    model = getattr(model, "module", model)
    return model.policy if isinstance(model, GroupForward) else model


# -- Reusing the rollout's image features when the vision tower is frozen ------------------------------------------
# A frozen tower (no trainable parameter in it) computes a constant of the step: the features the rollout's prefill
# got for a prompt's images are exactly what every later forward of that step (old log-probs, the training forward,
# a reference sharing the tower) would compute again. The hook point is the model's `get_image_features` (Qwen2-VL /
# Qwen2.5-VL / Qwen3-VL): patched on the instance for the duration of a block, it records (rollout) or returns the
# recorded output (later forwards) — the encoder module itself is not called, so its forward hooks (the counters)
# see exactly the passes that ran. A trainable tower is never reused (its output carries the gradient).


@dataclass
class ImageFeatures:
    """One `get_image_features` call of a prompt's prefill: its inputs (to check a later call is the same) and output."""

    pixel_values: torch.Tensor
    grid_thw: torch.Tensor | None
    output: Any


def _features_owner(model: Any) -> Any:
    """The module whose `get_image_features` the forward calls (the `*Model` under the `*ForConditionalGeneration`);
    None outside the shared-prefix architectures (the naive path encodes the image G times, batched: nothing to match)."""
    from mmrl.models.prefix import supports_prefix_sharing, unwrap

    policy = policy_of(model)
    if policy is None or not supports_prefix_sharing(policy):
        return None
    core = getattr(unwrap(policy), "model", None)
    return core if core is not None and hasattr(core, "get_image_features") else None


def vision_frozen(model: Any) -> bool:
    """True when `model` has a vision tower with parameters, none of them trainable (LoRA adapters in it included)."""
    from mmrl.models.vision_tower import vision_module

    tower = vision_module(policy_of(model))
    params = list(tower.parameters()) if tower is not None else []
    return bool(params) and not any(p.requires_grad for p in params)


@contextlib.contextmanager
def _patched_features(owner: Any, replacement: Any) -> Iterator[None]:
    previous = owner.__dict__.get("get_image_features")
    owner.get_image_features = replacement
    try:
        yield
    finally:
        if previous is None:
            del owner.get_image_features
        else:
            owner.get_image_features = previous


@contextlib.contextmanager
def capture_image_features(model: Any, sink: list[ImageFeatures]) -> Iterator[None]:
    """Append every image-feature computation in the block to `sink` (only when the tower is frozen)."""
    owner = _features_owner(model)
    if owner is None or not vision_frozen(model):
        yield
        return
    original = owner.get_image_features

    def record(pixel_values: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        out = original(pixel_values, *args, **kwargs)
        sink.append(ImageFeatures(pixel_values, _grid(args, kwargs), out))
        return out

    with _patched_features(owner, record):
        yield


def _grid(args: tuple, kwargs: dict[str, Any]) -> torch.Tensor | None:
    """`image_grid_thw` of a `get_image_features(pixel_values, image_grid_thw, ...)` call."""
    return args[0] if args else kwargs.get("image_grid_thw")


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is b:
        return True
    return (a is not None and b is not None and a.shape == b.shape and a.dtype == b.dtype
            and a.device == b.device and bool(torch.equal(a, b)))


@contextlib.contextmanager
def reuse_image_features(model: Any, features: ImageFeatures | None,
                         counters: dict[str, Any] | None = None) -> Iterator[None]:
    """While the block runs, a `get_image_features` call on exactly `features`' inputs returns its recorded output
    instead of running the tower; any other call runs normally. Nothing is reused when `features` is None or the
    tower of `model` is trainable. `counters["vision_reused"]` counts the reuses."""
    owner = _features_owner(model)
    if features is None or owner is None or not vision_frozen(model):
        yield
        return
    original = owner.get_image_features

    def lookup(pixel_values: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if _same(pixel_values, features.pixel_values) and _same(_grid(args, kwargs), features.grid_thw):
            if counters is not None:
                counters["vision_reused"] = counters.get("vision_reused", 0) + 1
            return features.output
        return original(pixel_values, *args, **kwargs)

    with _patched_features(owner, lookup):
        yield


def match_image_features(prompt: dict[str, Any], recorded: list[ImageFeatures]) -> ImageFeatures | None:
    """The recorded features of `prompt`'s images (the same pixel tensor, or an equal one), else None."""
    pixels = prompt.get("pixel_values")
    if pixels is None:
        return None
    for features in recorded:
        if features.pixel_values is pixels:
            return features
    for features in recorded:
        if _same(features.pixel_values, pixels) and _same(features.grid_thw, prompt.get("image_grid_thw")):
            return features
    return None
