"""Shared pieces of the benchmarks: structural counters hooked on a model, a phase stopwatch and a plain table.

>>> print(table(["what", "a", "b"], [["x", 1.0, 2.5]]))
what  a      b
----  -----  -----
x     1.000  2.500
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch


def _unwrap(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def vision_tower(model: Any) -> torch.nn.Module | None:
    """The vision encoder of a Qwen2-VL-style model, or None (the rollout's own lookup)."""
    from mmrl.generation.hf import vision_module

    return vision_module(model)


def language_model(model: Any) -> torch.nn.Module | None:
    """The text decoder stack of a Qwen2-VL-style model (`model.model.language_model` in transformers 5), or None."""
    core = getattr(_unwrap(model), "model", None)
    module = getattr(core, "language_model", None)
    return module if isinstance(module, torch.nn.Module) else None


class StructuralCounters:
    """Forward hooks counting vision-encoder calls, images encoded (rows of `grid_thw`), token positions run through
    the language model (prompt and completion, every forward) and LM-head input rows.

    Counting only happens while `active` is True, so warm-up steps can be left out.
    """

    def __init__(self, *models: Any) -> None:
        """Hook every model given (the policy and, when it is a separate copy, the reference model)."""
        self.active = False
        self.counts: dict[str, int] = defaultdict(int)
        self._handles = []
        seen: set[int] = set()
        for model in models:
            if model is None or id(_unwrap(model)) in seen:
                continue
            seen.add(id(_unwrap(model)))
            visual = vision_tower(model)
            if visual is not None:
                self._handles.append(visual.register_forward_hook(self._on_vision, with_kwargs=True))
            decoder = language_model(model)
            if decoder is not None:
                self._handles.append(decoder.register_forward_pre_hook(self._on_decoder, with_kwargs=True))
            lm_head = _unwrap(model).get_output_embeddings()
            self._handles.append(lm_head.register_forward_pre_hook(self._on_lm_head))

    def _on_vision(self, _module: Any, args: tuple, kwargs: dict, _out: Any) -> None:
        if not self.active:
            return
        self.counts["vision_calls"] += 1
        grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        self.counts["images_encoded"] += int(grid.shape[0]) if isinstance(grid, torch.Tensor) else 1

    def _on_decoder(self, _module: Any, args: tuple, kwargs: dict) -> None:
        if not self.active:
            return
        tokens = kwargs.get("inputs_embeds")
        if tokens is None:
            tokens = kwargs.get("input_ids", args[0] if args else None)
        if isinstance(tokens, torch.Tensor):
            self.counts["lm_positions"] += int(tokens.shape[0] * tokens.shape[1])

    def _on_lm_head(self, _module: Any, args: tuple) -> None:
        if self.active:
            hidden = args[0]
            self.counts["lm_head_rows"] += hidden.numel() // hidden.shape[-1]

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


class PhaseClock:
    """Accumulates wall time of wrapped callables by phase name (only while `active`)."""

    def __init__(self) -> None:
        self.active = False
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, obj: Any, attr: str, phase: str) -> None:
        """Replace `obj.attr` (a bound method or function) by a timed version, on this instance only."""
        original: Callable = getattr(obj, attr)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                if self.active:
                    self.seconds[phase] += time.perf_counter() - start

        setattr(obj, attr, timed)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1e5 else f"{value:.3g}"
    return str(value)


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A left-aligned plain-text table."""
    cells = [header] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
