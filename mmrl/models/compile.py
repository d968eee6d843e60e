"""`model.compile`: the text decoder layers run through `torch.compile` during the policy update (not the rollout).

Why the decoder layers and only during the update: they are where a step's training FLOPs are (prompt pass and
completion pass, forward and backward). The rollout's decode runs one token at a
time against a growing cache: every step a new shape, where compilation costs far more than it saves unless the
whole decode loop is built for it (static caches, CUDA graphs), so it stays eager.

Each layer compiles its own graphs (its KV-cache entry is looked up by layer number), per pass (prompt, completions;
with and without gradients). Shapes differ from micro-batch to micro-batch (prompt length, G, completion width): the
first shape compiles, the second recompiles with dynamic shapes, later ones reuse it. Compilation takes seconds to minutes (more on a CPU)
before the first update step; it pays back over long runs on GPUs. Results equal the eager forward's up to float
rounding (fused kernels sum in another order).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from mmrl.errors import UserError
from mmrl.models.prefix import unwrap


def decoder_layers(model: Any) -> list[torch.nn.Module]:
    """The text decoder layers of an image-text-to-text model (wrapped or not); UserError when there are none."""
    inner = unwrap(model)  # under a peft wrapper: the transformers model (LoRA layers stay injected)
    core = getattr(inner, "model", None)
    for holder in (getattr(core, "language_model", None), core, getattr(inner, "language_model", None)):
        layers = getattr(holder, "layers", None)
        if isinstance(layers, torch.nn.ModuleList) and len(layers):
            return list(layers)
    kind = getattr(getattr(inner, "config", None), "model_type", type(inner).__name__)
    raise UserError(f"model.compile: no text decoder layers found in this model ({kind}); set model.compile=false")


@contextlib.contextmanager
def compiled_decoder_layers(model: Any, enabled: bool = True) -> Iterator[None]:
    """While the block runs, every text decoder layer of `model` calls its compiled version (built on first use and
    kept on the layer, so later updates reuse the compiled graphs). Nothing changes when `enabled` is False."""
    if not enabled:
        yield
        return
    layers = decoder_layers(model)
    for layer in layers:
        if layer.__dict__.get("_mmrl_compiled") is None:
            layer.__dict__["_mmrl_compiled"] = torch.compile(layer._call_impl)
        layer._compiled_call_impl = layer.__dict__["_mmrl_compiled"]  # what nn.Module.__call__ runs when set
    # The KV cache is a Python list indexed by the layer number, so each layer (and each pass: prompt, completions,
    # with and without gradients) compiles its own graph: room for them, past dynamo's default of 8 per function.
    config = torch._dynamo.config
    limit = max(config.recompile_limit, 16 * len(layers))
    try:
        with config.patch(recompile_limit=limit, accumulated_recompile_limit=max(limit, config.accumulated_recompile_limit)):
            yield
    finally:
        for layer in layers:
            layer._compiled_call_impl = None
