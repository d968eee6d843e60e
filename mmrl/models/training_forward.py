"""The training forward as one `nn.Module.forward` (what DDP / FSDP2 / ZeRO wrap), with activation checkpointing.

`GroupForward(policy)(prompt, completion_ids, completion_mask)` returns the [G, T] completion log-probs of one prompt's
group: the prompt (and its image) runs once, its keys/values are shared by the G completions, and only completion
positions reach the LM head (`mmrl.models.logprobs.completion_logprobs` does the work). Wrapping this module, rather
than the policy, puts the prompt pass, the completion pass and the LM head inside ONE forward, so DDP's reducer sees
one forward per backward.

Activation checkpointing under prefix sharing. transformers' checkpointed decoder layers drop the KV cache in training
mode because a replayed layer (recomputed in backward) would append its keys a second time. Two caches make the
replay harmless, so every text decoder layer stays checkpointed:
- `PrefixRecorder` (the prompt pass): a layer's `update` overwrites its entry instead of appending, so the replay
  writes the same keys again;
- `BranchCache` (the completion pass): the prompt's keys/values are read-only; `update` returns prompt + new keys,
  broadcast over the G completions, and stores nothing, so the replay sees exactly what the forward saw.
The prompt's keys are ordinary autograd tensors of the prompt pass: the G branches' gradients sum into them (the
broadcast), and the checkpointed prompt layers recompute their activations when that gradient arrives.

Why not pack the prompt and the G completions into one sequence with a block mask: it needs a 4-D attention mask,
which excludes flash-attention (FA2/FA3 take no arbitrary masks) and makes attention quadratic in G x T. The cache
route keeps whatever attention implementation the model was loaded with (sdpa, flash_attention_2, eager).
Models the prefix route does not know fall back to the naive forward (G full sequences), which checkpoints natively.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache

from mmrl.errors import UserError


class PrefixRecorder(DynamicCache):
    """Records the prompt's keys/values; a layer run again (checkpoint replay) gets a new entry, never appends.

    The replay swaps in a copy of the empty layer the cache was built with; it never calls the layer's `reset()`,
    whose meaning changed between releases: up to transformers 5.17 it zeroes the tensors in place and leaves the
    layer initialised (the replay then appended its keys after P zeros: right log-probs, wrong gradients); from 5.18
    it drops them. Build it with `config`, so the layers (and their kinds: full or sliding window) exist before the
    first write.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.layers:
            raise ValueError("PrefixRecorder needs config=<the text model's config> (its layers must exist up front)")
        self._empty_layers = [copy.deepcopy(layer) for layer in self.layers]  # no tensors yet: cheap to copy
        self._written: set[int] = set()

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if layer_idx in self._written:  # a replay: the old entry's tensors are left as they are (autograd holds them)
            self.layers[layer_idx] = copy.deepcopy(self._empty_layers[layer_idx])
        self._written.add(layer_idx)
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)


class BranchCache(DynamicCache):
    """The prompt's keys/values, read-only, shared by a batch of continuations (batch 1 broadcast to the query's)."""

    @classmethod
    def of(cls, prefix: DynamicCache) -> BranchCache:
        # A shallow copy keeps the recorder's tensors (and the autograd graph behind them); a later replay of the
        # prompt pass re-binds the recorder's attributes, not these.
        branch = copy.copy(prefix)
        branch.__class__ = cls
        branch.layers = [copy.copy(layer) for layer in prefix.layers]
        return branch

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        layer = self.layers[layer_idx]
        batch = key_states.shape[0]
        keys = layer.keys.expand(batch, *layer.keys.shape[1:])
        values = layer.values.expand(batch, *layer.values.shape[1:])
        return torch.cat([keys, key_states], dim=-2), torch.cat([values, value_states], dim=-2)

    def batch_repeat_interleave(self, repeats: int) -> None:
        """No-op: the prompt's keys broadcast to the query batch in `update` (no G-fold copy is stored)."""


@contextlib.contextmanager
def checkpoint_with_shared_cache(decoder_layers: list[torch.nn.Module]) -> Iterator[None]:
    """While the block runs, checkpointed decoder layers keep the cache they are given (the caches above make the
    replay exact) and checkpoint non-reentrantly (a reentrant checkpoint would cut the gradient that flows from the
    completions into the prompt's keys, which reach the layer through the cache, not its positional inputs)."""
    changed = [m for m in decoder_layers if getattr(m, "gradient_checkpointing", False)]
    _check_checkpoint_names(changed)
    saved = [(m.__dict__.get("_can_checkpoint_with_cache"), m.__dict__.get("_gradient_checkpointing_func"))
             for m in changed]
    for module in changed:
        module._can_checkpoint_with_cache = True
        module._gradient_checkpointing_func = functools.partial(checkpoint, use_reentrant=False)
    try:
        yield
    finally:
        for module, (can, func) in zip(changed, saved):
            for name, value in (("_can_checkpoint_with_cache", can), ("_gradient_checkpointing_func", func)):
                if value is None:
                    module.__dict__.pop(name, None)
                else:
                    setattr(module, name, value)


def _check_checkpoint_names(layers: list[torch.nn.Module]) -> None:
    """Refuse a transformers whose checkpointed layers lack the two names set above: setting them would change
    nothing, the layer would drop the prompt's cache and the completions would run without their prompt."""
    for layer in layers:
        missing = [name for name in ("_can_checkpoint_with_cache", "_gradient_checkpointing_func")
                   if not hasattr(layer, name)]
        if missing:
            import transformers

            raise UserError(f"model.gradient_checkpointing: transformers {transformers.__version__}'s "
                            f"{type(layer).__name__} has no {', '.join(missing)}; the shared-prefix forward cannot "
                            "keep the prompt's cache in it: install transformers>=5.17,<6 or set "
                            "model.gradient_checkpointing=false")


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
        from mmrl.models.logprobs import DEFAULT_CHUNK, completion_logprobs

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
