"""Useful FLOPs of a GRPO step, counted from the model config, and this machine's matmul rate: the physical bound.

Counting rule (what "useful" means here):
- Only matrix products count, 2 FLOPs per multiply-add; norms, activations, softmax, RoPE and biases are left out.
- Text decoder, per position run: q, k, v, o projections (grouped-query k/v) and the three SwiGLU matrices, in every
  layer; attention adds 4 · heads · head_dim FLOPs per (query, key) pair (QK^T and AV), each query seeing the keys
  up to and including itself (causal).
- A group (one prompt, G completions of L tokens) needs the prompt's positions once (shared by the G branches) and,
  per branch, its first L - 1 completion positions (the last token's own output predicts nothing); the LM head runs
  on 1 + G · (L - 1) rows (the prompt's last position, shared, and those completion positions).
- The rollout is that forward once (decoding needs no backward). The update is forward + backward of the same
  positions, counted as 3 × forward. A reference forward (beta > 0) is 1 × forward. Old log-probs are not counted
  (with one update per rollout they equal the current ones).
- Vision tower (Qwen2.5-VL): patch embedding, per block qkv/proj/SwiGLU on every patch, attention inside each window
  (windowed blocks) or over the whole image (full-attention blocks), and the patch merger. It runs once per unique
  image in the rollout; the update adds 3 × that when the tower trains, nothing when it is frozen (its output is a
  constant of the step); a reference forward adds 1 × when the tower trains (the reference tower differs).

>>> text = TextShape(hidden=8, layers=1, heads=2, kv_heads=1, head_dim=4, intermediate=16, vocab=10)
>>> text.linear_flops_per_position()
1152
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class TextShape:
    """The text decoder's dimensions (`head_dim` × `heads` may differ from `hidden`)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int

    @classmethod
    def from_config(cls, config: Any) -> TextShape:
        """From a transformers config (the VLM's or its `text_config`)."""
        text = getattr(config, "text_config", None) or config
        heads = text.num_attention_heads
        return cls(hidden=text.hidden_size, layers=text.num_hidden_layers, heads=heads,
                   kv_heads=getattr(text, "num_key_value_heads", None) or heads,
                   head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
                   intermediate=text.intermediate_size, vocab=text.vocab_size)

    def linear_flops_per_position(self) -> int:
        """Projection and MLP FLOPs of one position through all layers."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        per_layer = self.hidden * q + 2 * self.hidden * kv + q * self.hidden + 3 * self.hidden * self.intermediate
        return 2 * per_layer * self.layers

    def attention_flops(self, queries: int, keys_before: int) -> int:
        """Attention FLOPs of `queries` consecutive positions after `keys_before` cached ones (causal), all layers."""
        pairs = queries * keys_before + queries * (queries + 1) // 2
        return 4 * self.heads * self.head_dim * pairs * self.layers

    def head_flops(self, rows: int) -> int:
        return 2 * self.hidden * self.vocab * rows


@dataclass(frozen=True)
class VisionShape:
    """A Qwen2.5-VL vision tower's dimensions; `window` is the attention window side in merged units."""

    hidden: int
    depth: int
    intermediate: int
    patch: int
    temporal_patch: int
    in_channels: int
    merge: int
    out_hidden: int
    window: int
    full_attention_blocks: tuple[int, ...]

    @classmethod
    def from_config(cls, config: Any) -> VisionShape:
        vision = getattr(config, "vision_config", None) or config
        kind = getattr(vision, "model_type", "")
        if kind != "qwen2_5_vl_vision":
            raise ValueError(f"vision FLOPs are counted for Qwen2.5-VL towers only (got model_type {kind!r})")
        return cls(hidden=vision.hidden_size, depth=vision.depth, intermediate=vision.intermediate_size,
                   patch=vision.patch_size, temporal_patch=vision.temporal_patch_size,
                   in_channels=vision.in_channels, merge=vision.spatial_merge_size, out_hidden=vision.out_hidden_size,
                   window=vision.window_size // vision.spatial_merge_size // vision.patch_size,
                   full_attention_blocks=tuple(vision.fullatt_block_indexes))

    def _window_pairs(self, h: int, w: int) -> int:
        """(query, key) pairs of one frame's windowed attention: windows of `window` × `window` merged units, the
        last row/column of windows cut short where the grid does not divide."""
        def sides(n: int) -> list[int]:
            return [min(self.window, n - start) for start in range(0, n, self.window)]

        unit = self.merge * self.merge
        return sum((a * b * unit) ** 2 for a in sides(h // self.merge) for b in sides(w // self.merge))

    def image_flops(self, grid: tuple[int, int, int]) -> int:
        """Forward FLOPs of the tower on one image of `grid` = (t, h, w) patches (`image_grid_thw`)."""
        t, h, w = grid
        patches = t * h * w
        embed = 2 * self.in_channels * self.temporal_patch * self.patch * self.patch * self.hidden * patches
        block_linear = 2 * (4 * self.hidden * self.hidden + 3 * self.hidden * self.intermediate) * patches
        full_pairs, window_pairs = t * (h * w) ** 2, t * self._window_pairs(h, w)
        attention = sum(4 * self.hidden * (full_pairs if i in self.full_attention_blocks else window_pairs)
                        for i in range(self.depth))
        wide = self.hidden * self.merge * self.merge
        merger = 2 * (wide * wide + wide * self.out_hidden) * (patches // (self.merge * self.merge))
        return embed + self.depth * block_linear + attention + merger


@dataclass(frozen=True)
class PromptShape:
    """One prompt: its token count (image tokens included) and the `image_grid_thw` rows of its images."""

    tokens: int
    grids: tuple[tuple[int, int, int], ...] = ()


def square_image_grid(side: int, patch: int = 14, temporal: int = 1) -> tuple[int, int, int]:
    """The (t, h, w) patch grid of a `side` × `side` image kept at its size (side a multiple of 28)."""
    return (temporal, side // patch, side // patch)


@dataclass(frozen=True)
class StepFlops:
    """Useful FLOPs of one GRPO step, by phase."""

    rollout: int
    update: int
    reference: int

    @property
    def total(self) -> int:
        return self.rollout + self.update + self.reference


def group_text_forward(text: TextShape, prompt_tokens: int, group_size: int, length: int) -> int:
    """Text FLOPs of one forward over a group: the prompt once, each branch's first L - 1 positions, the LM head."""
    branch = max(length - 1, 0)
    positions = prompt_tokens + group_size * branch
    attention = text.attention_flops(prompt_tokens, 0) + group_size * text.attention_flops(branch, prompt_tokens)
    return text.linear_flops_per_position() * positions + attention + text.head_flops(1 + group_size * branch)


def grpo_step_flops(config: Any, prompts: list[PromptShape], group_size: int, length: int,
                    vision_trainable: bool, beta: float = 0.0) -> StepFlops:
    """Useful FLOPs of a GRPO step over `prompts` (one group each, G = `group_size`, every completion `length`
    tokens), by the counting rule of this module."""
    text = TextShape.from_config(config)
    has_images = any(p.grids for p in prompts)
    vision = VisionShape.from_config(config) if has_images else None
    text_fwd = sum(group_text_forward(text, p.tokens, group_size, length) for p in prompts)
    vision_fwd = sum(vision.image_flops(g) for p in prompts for g in p.grids) if vision else 0
    update = 3 * text_fwd + (3 * vision_fwd if vision_trainable else 0)
    reference = (text_fwd + (vision_fwd if vision_trainable else 0)) if beta > 0 else 0
    return StepFlops(rollout=text_fwd + vision_fwd, update=update, reference=reference)


def matmul_rates(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, size: int | None = None,
                 repeats: int = 15) -> list[float]:
    """FLOP/s of `repeats` timed `size` × `size` matmuls on `device` at the current torch thread count (after one
    warm-up). Callers take the median (on a shared machine it sees the load the benchmark's own steps see) and the
    best (closest to the machine's physical rate)."""
    device = torch.device(device)
    size = size or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    torch.matmul(a, b)
    sync()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        sync()
        rates.append(2 * size**3 / (time.perf_counter() - start))
    return rates


def matmul_rate(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, size: int | None = None,
                repeats: int = 15) -> float:
    """Median of `matmul_rates`."""
    return statistics.median(matmul_rates(device, dtype, size, repeats))
