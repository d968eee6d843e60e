"""`disable_dropout`: the RL update's forwards run without dropout."""

from __future__ import annotations

import torch


def disable_dropout(model: torch.nn.Module) -> None:
    """Zero every dropout of `model` (dropout modules, LoRA's included, and attention-dropout rates read at forward
    time: `attention_dropout`, or `dropout` as SigLIP/Idefics3 attention name it). The RL update needs the policy's
    forward deterministic: with dropout the old and new log-probs of the same weights differ, so the importance ratio
    is not 1 where it must be. Idempotent."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = 0.0
        for rate in ("attention_dropout", "dropout"):
            if isinstance(getattr(module, rate, None), float):
                setattr(module, rate, 0.0)
