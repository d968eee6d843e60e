"""How a per-token loss [B, T] becomes the one scalar to backpropagate: the registry of aggregations, each a small
function of (per-token loss, mask, `Normalisers`).

Gradient accumulation and several processes — the normaliser contract
---------------------------------------------------------------------
One optimizer step consumes a *global batch*: every micro-batch of every process. The trainer calls `backward()`
on each micro-batch's aggregated loss and the gradients add up (accumulation), then DDP *averages* them over the
`world_size` processes. For the result to equal the loss of the whole global batch computed at once:
- pass the **global** normalisers to every micro-batch: `global_active_tokens` = active (mask=1) tokens summed over all
  micro-batches and all processes of the step (an all-reduce of the local counts), `global_num_sequences` = number of
  completions in the step, likewise summed;
- do **not** divide by the number of accumulation steps (the global normaliser already did);
- multiply each micro-batch loss by `world_size` before `backward()` to undo DDP's averaging (DeepSpeed/FSDP averaging
  likewise). With one process, world_size = 1 and nothing changes.
Under this contract `dapo` is the exact token mean over the global batch, `grpo` the exact mean over all sequences of
their token means, and `dr_grpo` the exact sum / (global sequences * max_completion_length). `bnpo` is by definition
the token mean of each micro-batch; `global_micro_batches` (all micro-batches of the step on all processes) makes
the step's loss their mean, so 8 identical groups give the loss of 1, as for the other aggregations.
When a global count is None the functions fall back to the local micro-batch value (single micro-batch training).

>>> import torch
>>> loss = torch.tensor([[1.0, 3.0], [2.0, 0.0]]); mask = torch.tensor([[1, 1], [1, 0]])
>>> float(aggregate("grpo", loss, mask, max_completion_length=2))  # ((1+3)/2 + 2/1) / 2
2.0
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from mmrl.registry import Registry


@dataclass(frozen=True)
class Normalisers:
    """What a micro-batch's loss is divided by: the stage's completion limit and the step's global counts (summed over
    micro-batches and processes; None: this micro-batch's own)."""

    max_completion_length: int
    global_active_tokens: float | None = None
    global_num_sequences: int | None = None
    global_micro_batches: int | None = None
    global_entropy_tokens: float | None = None  # tokens the entropy bonus averages over (`mmrl.rl.entropy`)


AggregationFn = Callable[[torch.Tensor, torch.Tensor, Normalisers], torch.Tensor]
AGGREGATIONS: Registry[AggregationFn] = Registry("loss aggregation", "algorithm.loss_aggregation")


def _num_sequences(per_token_loss: torch.Tensor, norms: Normalisers) -> int:
    return max(norms.global_num_sequences if norms.global_num_sequences is not None else per_token_loss.shape[0], 1)


@AGGREGATIONS.register("grpo")
def aggregate_grpo(per_token_loss: torch.Tensor, mask: torch.Tensor, norms: Normalisers) -> torch.Tensor:
    """Token mean within each sequence, then the mean over sequences: sum_i(mean_t loss_it) / num_sequences.

    Sequences with no active token (e.g. masked truncated completions) contribute 0 but still count, as in TRL.
    num_sequences = `global_num_sequences` when given, else the local B. [B, T] -> scalar.
    """
    mask = mask.to(per_token_loss.dtype)
    per_seq = (per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return per_seq.sum() / _num_sequences(per_token_loss, norms)


@AGGREGATIONS.register("bnpo")
def aggregate_bnpo(per_token_loss: torch.Tensor, mask: torch.Tensor, norms: Normalisers) -> torch.Tensor:
    """Token mean of this micro-batch, divided by `global_micro_batches` (micro-batches of the step summed over all
    processes; 1 when None): the step's loss is the mean over its micro-batches of their token means, as TRL's bnpo
    under gradient accumulation and DDP. [B, T] -> scalar."""
    mask = mask.to(per_token_loss.dtype)
    local = (per_token_loss * mask).sum() / mask.sum().clamp(min=1)
    return local / max(norms.global_micro_batches or 1, 1)


@AGGREGATIONS.register("dr_grpo")
def aggregate_dr_grpo(per_token_loss: torch.Tensor, mask: torch.Tensor, norms: Normalisers) -> torch.Tensor:
    """Sum over active tokens / (num_sequences * max_completion_length) — no length bias (Dr. GRPO).

    num_sequences = `global_num_sequences` when given, else the local B. [B, T] -> scalar.
    """
    mask = mask.to(per_token_loss.dtype)
    return (per_token_loss * mask).sum() / (_num_sequences(per_token_loss, norms) * norms.max_completion_length)


@AGGREGATIONS.register("dapo")
def aggregate_dapo(per_token_loss: torch.Tensor, mask: torch.Tensor, norms: Normalisers) -> torch.Tensor:
    """Sum over active tokens / `global_active_tokens` (active tokens of the whole global batch; see module doc).

    Falls back to the local active-token count when `global_active_tokens` is None. [B, T] -> scalar.
    """
    mask = mask.to(per_token_loss.dtype)
    denom = norms.global_active_tokens if norms.global_active_tokens is not None else float(mask.sum())
    return (per_token_loss * mask).sum() / max(float(denom), 1.0)


def aggregate(
    name: str,
    per_token_loss: torch.Tensor,
    mask: torch.Tensor,
    *,
    max_completion_length: int,
    global_active_tokens: float | None = None,
    global_num_sequences: int | None = None,
    global_micro_batches: int | None = None,
) -> torch.Tensor:
    """Look up `name` in AGGREGATIONS and apply it (the keyword form: the counts become one `Normalisers`)."""
    norms = Normalisers(max_completion_length, global_active_tokens, global_num_sequences, global_micro_batches)
    return AGGREGATIONS.get(name)(per_token_loss, mask, norms)
