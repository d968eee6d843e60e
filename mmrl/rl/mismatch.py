"""Rollout/trainer mismatch: importance-sampling corrections and the diagnostics peers log.

The completions were drawn by the rollout engine (log-probs `sampler_logp`), not by the trainer's forward of the same
weights (`old_logp`): kernels, bf16 and image preprocessing differ. Each correction in `IS_CORRECTIONS` turns the
log-ratio log(trainer / sampler) into a weight [B, T] (no gradient) that multiplies the policy-gradient loss:

- token_truncate: min(r_t, cap) (and max(., floor)) per token — TIS (Yao et al., 2025; TRL token_truncate, verl TIS);
- token_mask: r_t where floor <= r_t <= cap, else 0 — masked IS (MIS; TRL token_mask);
- sequence_truncate / sequence_mask: the same with one ratio per completion, r = exp(sum_t log-ratio) (TRL's
  sequence_* modes: a product over the tokens, not a geometric mean);
- icepop: r_t where 1/cap <= r_t <= cap, else 0 — IcePop's two-sided token mask (Ling team, "Every Step Evolves:
  Scaling RL for trillion-scale thinking model", 2025: weight k_t kept inside [alpha, beta], here [1/c, c]);
- none: weight 1 (the mismatch is only measured).
Exact under micro-batches: a weight reads one row only (rows are never cut), and it multiplies the per-token loss
before the aggregation, whose normalisers do not depend on it.

Diagnostics (means over active tokens; per sequence where named): logprob_kl = k3 estimate of KL(sampler || trainer)
(>= 0, 0 when they agree), logprob_abs_diff_max, chi2_token = E[r_t^2] - 1 and chi2_seq = E[r_seq^2] - 1 (the
chi-square divergence of trainer from sampler, estimated on the sampler's tokens, as verl's rollout-correction
metrics), is_ess = (mean w)^2 / mean(w^2) of the weights in use (normalised effective sample size, 1 when all weights
agree), tis_weight_mean and tis_clip_frac (tokens whose weight differs from their ratio: truncated or masked).
Every figure is a mean over active tokens (chi2_seq weighs each sequence by its tokens; is_ess is formed from two
such means), so a group's figures are the same whatever micro-batches it was cut into.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mmrl.registry import Registry


@dataclass(frozen=True)
class MismatchBounds:
    """`algorithm.tis_cap` (upper bound; None: none) and `algorithm.tis_floor` (lower bound; None: none)."""

    cap: float | None
    floor: float | None = None


# (log-ratio [B, T] with 0 on inactive tokens, bounds) -> weight [B, T] or [B, 1]
CorrectionFn = Callable[[torch.Tensor, MismatchBounds], torch.Tensor]
IS_CORRECTIONS: Registry[CorrectionFn] = Registry("importance-sampling correction", "algorithm.is_correction")


def _truncate(ratio: torch.Tensor, b: MismatchBounds) -> torch.Tensor:
    return ratio if b.floor is None and b.cap is None else ratio.clamp(min=b.floor, max=b.cap)


def _mask(ratio: torch.Tensor, low: float | None, high: float | None) -> torch.Tensor:
    inside = (ratio >= (low if low is not None else -math.inf)) & (ratio <= (high if high is not None else math.inf))
    return torch.where(inside, ratio, torch.zeros_like(ratio))


def _sequence(log_ratio: torch.Tensor) -> torch.Tensor:
    return torch.exp(log_ratio.sum(-1, keepdim=True))


IS_CORRECTIONS.add("token_truncate", lambda log_ratio, b: _truncate(torch.exp(log_ratio), b))
IS_CORRECTIONS.add("token_mask", lambda log_ratio, b: _mask(torch.exp(log_ratio), b.floor, b.cap))
IS_CORRECTIONS.add("sequence_truncate", lambda log_ratio, b: _truncate(_sequence(log_ratio), b))
IS_CORRECTIONS.add("sequence_mask", lambda log_ratio, b: _mask(_sequence(log_ratio), b.floor, b.cap))
IS_CORRECTIONS.add("icepop", lambda log_ratio, b: _mask(torch.exp(log_ratio), 1.0 / b.cap if b.cap else None, b.cap))


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    return float(torch.where(mask > 0, x, torch.zeros_like(x)).sum() / mask.sum().clamp(min=1))


def mismatch_weights(mode: str, old_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor,
                     bounds: MismatchBounds) -> tuple[torch.Tensor, dict[str, float]]:
    """The `mode` correction's weights [B, T] (1 on inactive tokens) and the mismatch diagnostics (module doc).

    Shapes: [B, T] each; `old_logp` is the trainer's log-prob of the rollout weights (no gradient is taken).

    >>> w, m = mismatch_weights("token_mask", torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.0, -4.0]]),
    ...                         torch.ones(1, 2), MismatchBounds(cap=2.0))
    >>> w.tolist(), m["tis_clip_frac"]  # the second token's ratio e^2 > 2: masked
    ([[1.0, 0.0]], 0.5)
    """
    correction = IS_CORRECTIONS.get(mode)
    with torch.no_grad():
        active = mask > 0
        mask = mask.to(old_logp.dtype)
        diff = torch.where(active, old_logp.detach() - sampler_logp.to(old_logp), torch.zeros_like(old_logp))
        diff = torch.nan_to_num(diff, nan=0.0)  # a token the engine could not score: ratio 1, no correction (as TRL)
        ratio = torch.exp(diff)
        weight = correction(diff, bounds).expand_as(diff)
        # the sequence log-ratio clamped to 20 for the figure only (an inf would make the logged mean inf or NaN)
        seq_ratio = torch.exp(diff.sum(-1, keepdim=True).clamp(max=20.0)).expand_as(diff)
        metrics = {
            "logprob_kl": _masked_mean(ratio - 1 - diff, mask),  # k3 of KL(sampler || trainer), sampler's tokens
            "logprob_abs_diff_max": float(diff.abs().max()) if diff.numel() else 0.0,
            # E[r^2 - 1], not E[r^2] - 1: 0 (no evidence of mismatch), not -1, for rows without a token
            "chi2_token": _masked_mean(ratio.square() - 1.0, mask),
            "chi2_seq": _masked_mean(seq_ratio.square() - 1.0, mask),
            "is_weight_sq_mean": _masked_mean(weight.square(), mask),
            "tis_weight_mean": _masked_mean(weight, mask),
            "tis_clip_frac": _masked_mean((weight != ratio.expand_as(weight)).to(mask.dtype), mask),
        }
    return torch.where(active, weight, torch.ones_like(weight)), effective_sample_size(metrics)


def effective_sample_size(metrics: dict[str, float]) -> dict[str, float]:
    """`metrics` with is_ess = tis_weight_mean^2 / is_weight_sq_mean, from the two token means (which combine exactly
    over a group's micro-batches, where a ratio of means does not): call it again on merged metrics."""
    if "tis_weight_mean" not in metrics or "is_weight_sq_mean" not in metrics:
        return metrics
    squares = metrics["is_weight_sq_mean"]
    return {**metrics, "is_ess": metrics["tis_weight_mean"] ** 2 / squares if squares > 0 else 0.0}


def truncated_is_weights(old_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor,
                         cap: float | None) -> tuple[torch.Tensor, dict[str, float]]:
    """Token-level truncated importance sampling: `mismatch_weights("token_truncate", ...)` with `cap` alone.

    >>> w, m = truncated_is_weights(torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.0, -4.0]]), torch.ones(1, 2), 2.0)
    >>> w.tolist(), m["tis_clip_frac"]
    ([[1.0, 2.0]], 0.5)
    """
    return mismatch_weights("token_truncate", old_logp, sampler_logp, mask, MismatchBounds(cap))
