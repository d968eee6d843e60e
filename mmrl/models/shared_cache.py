"""The KV caches that let the prompt and its G completions share the prompt's keys/values under activation
checkpointing (used by `mmrl.models.logprobs.completion_logprobs`).

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

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
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

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
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
    saved = [
        (m.__dict__.get("_can_checkpoint_with_cache"), m.__dict__.get("_gradient_checkpointing_func")) for m in changed
    ]
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
        missing = [
            name for name in ("_can_checkpoint_with_cache", "_gradient_checkpointing_func") if not hasattr(layer, name)
        ]
        if missing:
            import transformers

            raise UserError(
                f"model.gradient_checkpointing: transformers {transformers.__version__}'s "
                f"{type(layer).__name__} has no {', '.join(missing)}; the shared-prefix forward cannot "
                "keep the prompt's cache in it: install transformers>=5.17,<6 or set "
                "model.gradient_checkpointing=false"
            )


__all__ = ["BranchCache", "PrefixRecorder", "checkpoint_with_shared_cache"]
