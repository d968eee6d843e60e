"""Shared pieces of the benchmarks: structural counters hooked on a model, a phase stopwatch, a plain table, the
physical bound (useful FLOPs of a step over a matmul rate sampled through the run) and rounds of two sides' runs.

>>> print(table(["what", "a", "b"], [["x", 1.0, 2.5]]))
what  a      b
----  -----  -----
x     1.000  2.500
"""

from __future__ import annotations

import functools
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.flops import PromptShape, grpo_step_flops, matmul_rates, square_image_grid


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


# ---------------------------------------------------------------------------------------------------------------
# the physical bound
# ---------------------------------------------------------------------------------------------------------------
def step_flops(config: Any, prompt_tokens: float, image_size: int, prompts: int, group_size: int, length: int,
               vision_trainable: bool, beta: float = 0.0) -> int:
    """Useful FLOPs of one benchmark step (`benchmarks/flops.py`): `prompts` prompts of `prompt_tokens` tokens (the
    measured mean, rounded), one `image_size`² image each (kept at its size), G completions of the forced length."""
    prompt = PromptShape(round(prompt_tokens), (square_image_grid(image_size, config.vision_config.patch_size),))
    return grpo_step_flops(config, [prompt] * prompts, group_size, length, vision_trainable=vision_trainable,
                           beta=beta).total


def bound_fraction(useful_flops: float, rate: float, seconds_per_step: float) -> float:
    """The fraction of the physical bound a step reaches: (useful FLOPs / matmul FLOP/s) over its measured seconds."""
    return useful_flops / rate / seconds_per_step


class MatmulRates:
    """This machine's matmul FLOP/s, sampled several times through a run (`sample()` before, between and after the
    measured parts: a shared machine's load drifts). The median sees the load the steps saw; the best is closest
    to the machine's physical rate."""

    def __init__(self, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> None:
        self.device, self.dtype = torch.device(device), dtype
        self.rates: list[float] = []

    def sample(self) -> None:
        self.rates += matmul_rates(self.device, self.dtype)

    @property
    def median(self) -> float:
        return statistics.median(self.rates)

    @property
    def best(self) -> float:
        return max(self.rates)

    def describe(self, dtype_name: str) -> str:
        return (f"# matmul ({dtype_name}, {torch.get_num_threads()} thread(s)): median {self.median / 1e9:.1f} "
                f"GFLOP/s, best {self.best / 1e9:.1f}, over {len(self.rates)} timings")


# ---------------------------------------------------------------------------------------------------------------
# rounds of two sides
# ---------------------------------------------------------------------------------------------------------------
def samples_per_second(result: dict[str, Any]) -> float:
    return result["completions"] / result["seconds"]


def pool(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two runs of one side as one: times, counts and steps add up (same settings, so the rest is equal)."""
    out = dict(a)
    for key in ("seconds", "completions", "completion_tokens", "steps"):
        out[key] = a[key] + b[key]
    for key in ("phases", "counts"):
        out[key] = {k: a[key].get(k, 0) + b[key].get(k, 0) for k in {*a[key], *b[key]}}
    out["loss"] = a["loss"] + b["loss"]
    return out


class Rounds:
    """Two sides (`ours`, `theirs`) run round after round, alternating which goes first (a shared machine's load
    drifts): each side's runs pooled for the table, and each round's ratio of samples/s (ours / theirs)."""

    def __init__(self, ours: str, theirs: str) -> None:
        self.ours, self.theirs = ours, theirs
        self.pooled: dict[str, dict[str, Any]] = {}
        self.ratios: list[float] = []

    def order(self, round_: int) -> list[str]:
        return [self.ours, self.theirs] if round_ % 2 == 0 else [self.theirs, self.ours]

    def add(self, results: dict[str, dict[str, Any]]) -> None:
        """One round's results by side (one side only: pooled, no ratio)."""
        for side, result in results.items():
            self.pooled[side] = pool(self.pooled[side], result) if side in self.pooled else result
        if self.ours in results and self.theirs in results:
            self.ratios.append(samples_per_second(results[self.ours]) / samples_per_second(results[self.theirs]))

    def report(self, name: str) -> list[str]:
        """The closing lines: each round's ratio and the pooled one (several rounds), then `name=<median ratio>`."""
        if not self.ratios:
            return []
        lines = []
        if len(self.ratios) > 1:
            pooled = samples_per_second(self.pooled[self.ours]) / samples_per_second(self.pooled[self.theirs])
            lines.append(f"# speedup per round: {', '.join(f'{r:.3f}' for r in self.ratios)}; pooled {pooled:.3f}")
        return lines + [f"{name}={statistics.median(self.ratios):.3f}"]
