"""Run a prompt once and branch G continuations off its KV cache (Qwen2-VL / Qwen2.5-VL / Qwen3-VL).

Shared by the log-prob forward (with gradients) and the rollout decode loop (without). The recipe, and why each
step is there:
- M-RoPE positions of the prompt come from `get_rope_index` (needs `mm_token_type_ids`; without it the model silently
  uses 1-D positions). We compute them ourselves and pass them explicitly, so no stale `rope_deltas` stored on the
  model from a previous call can leak in; we also reset `rope_deltas` so later plain `generate`/forward calls start clean.
- Text tokens after the prompt have position `cache_length + rope_delta` on all 3 M-RoPE axes.
"""

from __future__ import annotations

import functools
import inspect
import logging
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

# Processor outputs that are laid out per prompt token ([1, P]); everything else (pixel_values, image_grid_thw) is
# per image.
SEQUENCE_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")
# Architectures whose forward takes explicit M-RoPE positions and a cache (Qwen3-VL's interleaved M-RoPE and patch
# size 16 change nothing here: positions of text tokens are the same on every axis, the image grid comes from the
# processor). Other models fall back to the naive forward.
PREFIX_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


def unwrap(model: Any) -> Any:
    """The transformers *ForConditionalGeneration under a peft wrapper (LoRA layers stay injected in it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def reset_rope_deltas(model: Any) -> None:
    """Forget the M-RoPE offset transformers keeps on the model between calls, so the next forward or `generate`
    computes its own instead of reusing a previous prompt's (a silently wrong position, not an error)."""
    core = getattr(unwrap(model), "model", None)
    if hasattr(core, "rope_deltas"):
        core.rope_deltas = None


def supports_prefix_sharing(model: Any) -> bool:
    """True for Qwen2-VL / Qwen2.5-VL / Qwen3-VL, whose forward this module knows how to branch."""
    inner = unwrap(model)
    core = getattr(inner, "model", None)
    return (
        getattr(inner.config, "model_type", None) in PREFIX_MODEL_TYPES
        and hasattr(core, "get_rope_index")
        and _rope_index_takes_types(type(core))
        and hasattr(inner, "lm_head")
    )


@functools.cache
def _rope_index_takes_types(core_class: type) -> bool:
    """`get_rope_index` reads token kinds from `mm_token_type_ids` (transformers 5.x); a release that took them
    otherwise would give 1-D positions to image tokens without an error, so such a model takes the naive forward."""
    return "mm_token_type_ids" in inspect.signature(core_class.get_rope_index).parameters


_FALLBACK_NOTED: set[str] = set()


def note_naive_fallback(model: Any) -> None:
    """Say once per architecture that it runs the naive forward (prompt and image recomputed per completion)."""
    kind = str(getattr(unwrap(model).config, "model_type", type(unwrap(model)).__name__))
    if kind not in _FALLBACK_NOTED:
        _FALLBACK_NOTED.add(kind)
        logging.getLogger(__name__).warning(
            "%s: no shared-prefix forward for this architecture; using the naive forward (the prompt and its image "
            "are recomputed for each of the G completions)", kind)


def strip_padding(prompt: dict[str, Any]) -> dict[str, Any]:
    """Drop padded columns of a single prompt (batch dim 1), so the prefix is exactly its real tokens."""
    mask = prompt.get("attention_mask")
    if prompt["input_ids"].shape[0] != 1:
        raise ValueError(f"a prompt dict holds one prompt (batch dim 1); got input_ids {tuple(prompt['input_ids'].shape)}")
    if mask is None or bool(mask.all()):
        return prompt
    keep = mask[0].bool()
    return {k: (v[:, keep] if k in SEQUENCE_KEYS and v is not None else v) for k, v in prompt.items()}


@dataclass
class Prefix:
    """A prompt run once: the hidden state of its last token, its KV cache and where text positions continue."""

    last_hidden: torch.Tensor  # [1, H]: scores the first completion token
    cache: Any  # transformers Cache holding the prompt's keys/values (batch 1 until `branch` is called)
    length: int  # P, prompt tokens in the cache
    rope_delta: torch.Tensor  # [1, 1] long: M-RoPE offset of text positions after the prompt


# The M-RoPE positions of the prompts forwarded lately, by their input_ids tensor (kept until it is freed): a step
# forwards one prompt many times (rollout, old and reference log-probs, each training micro-batch), and
# `get_rope_index` reads the token kinds and image grids on the host (several device syncs per forward).
_POSITIONS: dict[int, tuple[Any, tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]]] = {}
_POSITION_KEYS = ("mm_token_type_ids", "image_grid_thw", "video_grid_thw", "attention_mask")


def prompt_positions(core: Any, prompt: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """3-D M-RoPE positions [3, 1, P] of the prompt and its rope delta [1, 1]; computed once per prompt tensor."""
    ids = prompt["input_ids"]
    others = tuple(prompt.get(key) for key in _POSITION_KEYS)
    cached = _POSITIONS.get(id(ids))
    if cached is not None and cached[0]() is ids and all(a is b for a, b in zip(cached[1], others)):
        return cached[2]
    result = _prompt_positions(core, prompt)
    key = id(ids)
    _POSITIONS[key] = (weakref.ref(ids, lambda _, key=key: _POSITIONS.pop(key, None)), others, result)
    return result


def _prompt_positions(core: Any, prompt: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = prompt["input_ids"]
    types = prompt.get("mm_token_type_ids")
    has_vision = prompt.get("image_grid_thw") is not None or prompt.get("video_grid_thw") is not None
    if has_vision and types is None:
        raise ValueError("prompt has images but no mm_token_type_ids: Qwen2-VL would silently fall back to 1-D RoPE; "
                         "pass the processor's full output")
    if types is None:
        positions = torch.arange(ids.shape[1], device=ids.device).view(1, 1, -1).expand(3, 1, -1)
        return positions, torch.zeros(1, 1, dtype=torch.long, device=ids.device)
    positions, delta = core.get_rope_index(
        ids,
        mm_token_type_ids=types,
        image_grid_thw=prompt.get("image_grid_thw"),
        video_grid_thw=prompt.get("video_grid_thw"),
        attention_mask=prompt.get("attention_mask"),
    )
    return positions, delta.view(1, 1).to(ids.device)


def run_prefix(model: Any, prompt: dict[str, Any], cache: Any = None) -> Prefix:
    """Forward the prompt once (image encoded once) with a cache (`cache`, else a new DynamicCache); gradients flow
    if grad mode is on."""
    inner = unwrap(model)
    core = inner.model
    prompt = strip_padding(prompt)
    reset_rope_deltas(model)
    positions, delta = prompt_positions(core, prompt)
    vision = {k: prompt[k] for k in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")
              if prompt.get(k) is not None}
    out = core(
        input_ids=prompt["input_ids"],
        attention_mask=prompt.get("attention_mask"),
        position_ids=positions,
        mm_token_type_ids=prompt.get("mm_token_type_ids"),
        use_cache=True,
        **vision,
        **({cache_kwarg(core): cache} if cache is not None else {}),
    )
    reset_rope_deltas(model)
    return Prefix(out.last_hidden_state[:, -1], _output_cache(out), prompt["input_ids"].shape[1], delta)


class ComputeDtypeCache(DynamicCache):
    """A KV cache that stores keys and values in the compute dtype.

    Under bf16 autocast over fp32 weights, RoPE multiplies the keys by fp32 cos/sin, so the keys reach the cache in
    fp32 (the values, straight from a bf16 matmul, in bf16): a rollout's cache, the largest buffer of the decode,
    was half again as big as it needs to be, and every step's attention read fp32 keys that autocast casts to bf16
    anyway. Rounding them once when they are stored gives the attention the same bf16 keys."""

    def __init__(self, *args: Any, dtype: torch.dtype, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dtype = dtype

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return super().update(key_states.to(self.dtype), value_states.to(self.dtype), layer_idx, *args, **kwargs)


def rollout_cache(model: Any) -> DynamicCache | None:
    """The cache a rollout prefill starts from: one holding the compute dtype when that is below the weights' (bf16
    autocast over fp32 weights), else None (the model's own cache, already in its weights' dtype)."""
    from mmrl.models.placement import compute_dtype

    inner = unwrap(model)
    dtype = compute_dtype(model)
    weights = getattr(inner, "dtype", torch.float32)
    if dtype == weights or dtype.itemsize >= weights.itemsize:
        return None
    return ComputeDtypeCache(config=inner.model.language_model.config, dtype=dtype)


def text_positions(start: int | torch.Tensor, length: int, batch: int, rope_delta: torch.Tensor) -> torch.Tensor:
    """Positions [3, batch, length] of text tokens at cache positions start .. start+length-1. `start` and `rope_delta`
    are one value for all rows (an int, [1, 1]) or one per row ([batch], [batch, 1]: prompts of different lengths and
    images decoding together)."""
    offset = rope_delta.view(-1, 1) + (start.view(-1, 1) if isinstance(start, torch.Tensor) else start)
    pos = torch.arange(length, device=rope_delta.device).view(1, -1) + offset
    return pos.unsqueeze(0).expand(3, batch, -1)


def continue_from(model: Any, cache: Any, input_ids: torch.Tensor, start: int | torch.Tensor, rope_delta: torch.Tensor,
                  attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Run `input_ids` [B, L] after a cache of `start` real tokens (already repeated to batch B); hidden states
    [B, L, H]. Per-row `start` [B] / `rope_delta` [B, 1] with a 2-D `attention_mask` [B, cache slots + L] (0 on left
    padding) continue several prompts at once (`stack_prefixes`)."""
    core = unwrap(model).model
    positions = text_positions(start, input_ids.shape[1], input_ids.shape[0], rope_delta)
    out = core(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True,
               **{cache_kwarg(core): cache})
    return out.last_hidden_state


def can_stack(cache: Any) -> bool:
    """True when every layer of `cache` is a plain growing key/value layer that `stack_prefixes` can left-pad
    (not a sliding-window or quantized one)."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer and layer.is_initialized for layer in layers)


def stack_prefixes(prefixes: list[Prefix], repeats: int) -> tuple[Any, torch.Tensor]:
    """One cache for the branches of several prompts: prompt i's cache repeated `repeats` times (rows i*repeats ..),
    left padded with zeros to the longest prompt. Returns (the cache, which is prefixes[0].cache reused; left padding
    per row [len(prefixes) * repeats] long). The padded slots must be masked out by the caller's attention mask."""
    device = prefixes[0].last_hidden.device
    if len(prefixes) == 1:  # nothing to pad: any cache type repeats
        prefixes[0].cache.batch_repeat_interleave(repeats)
        return prefixes[0].cache, torch.zeros(repeats, dtype=torch.long, device=device)
    if not all(can_stack(p.cache) for p in prefixes):
        raise ValueError("stack_prefixes: these caches cannot be left padded; decode their prompts one at a time")
    width = max(p.length for p in prefixes)
    merged = prefixes[0].cache
    for index, layer in enumerate(merged.layers):
        for name in ("keys", "values"):
            parts = [getattr(p.cache.layers[index], name) for p in prefixes]
            padded = [torch.nn.functional.pad(t, (0, 0, width - t.shape[-2], 0)) for t in parts]
            setattr(layer, name, torch.cat(padded).repeat_interleave(repeats, dim=0))
    pad = torch.tensor([width - p.length for p in prefixes], dtype=torch.long, device=device)
    return merged, pad.repeat_interleave(repeats)


def drop_leading_slots(cache: Any, count: int) -> None:
    """Remove the first `count` slots of every layer (left padding no remaining row needs)."""
    for layer in cache.layers:
        layer.keys = layer.keys[..., count:, :]
        layer.values = layer.values[..., count:, :]


def cache_kwarg(module: Any) -> str:
    """The forward's name for the KV cache: `cache` (transformers >= 5.2x; `past_key_values` is deprecated there and
    removed in 5.40) or `past_key_values` (older 5.x)."""
    forward = type(module).forward
    key = (type(module), "cache")
    if key not in _CACHE_KWARG:
        _CACHE_KWARG[key] = "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"
    return _CACHE_KWARG[key]


_CACHE_KWARG: dict[tuple[type, str], str] = {}


def _output_cache(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values
