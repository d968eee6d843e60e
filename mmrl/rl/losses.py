"""The clipped policy-gradient loss per token, and the registry of ways to aggregate it into one scalar.

`policy_loss` returns a per-token loss [B, T] (already 0 on inactive positions); an aggregation from `AGGREGATIONS`
turns it into the scalar to backpropagate. The trainer picks both by name; nothing here branches on the algorithm.

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
When the normalisers are None the functions fall back to the local micro-batch values (single micro-batch training).

>>> import torch
>>> loss = torch.tensor([[1.0, 3.0], [2.0, 0.0]]); mask = torch.tensor([[1, 1], [1, 0]])
>>> float(aggregate("grpo", loss, mask, max_completion_length=2))  # ((1+3)/2 + 2/1) / 2
2.0
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from mmrl.registry import Registry
from mmrl.rl.kl import kl_estimate

if TYPE_CHECKING:
    from mmrl.config.rl import AlgorithmConfig

AggregationFn = Callable[..., torch.Tensor]
AGGREGATIONS: Registry[AggregationFn] = Registry("loss aggregation", "algorithm.loss_aggregation")
PolicyLossFn = Callable[..., tuple[torch.Tensor, dict[str, float]]]
POLICY_LOSSES: Registry[PolicyLossFn] = Registry("policy loss", "algorithm.policy_loss")


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def _surrogate(
    log_ratio: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float,
    eps_high: float,
    dual_clip_c: float | None,
    ratio_clamp: float | None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate for log-ratios [B, T] (per token) or [B, 1] (per sequence); returns [B, T] and metrics."""
    if ratio_clamp is not None:
        log_ratio = log_ratio.clamp(-ratio_clamp, ratio_clamp)
    ratio = torch.exp(log_ratio)
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    loss = torch.maximum(-ratio * adv, -clipped * adv).expand_as(mask)
    with torch.no_grad():
        r, a = ratio.expand_as(mask), adv.expand_as(mask)
        metrics = {
            "clip_frac_low": float(_masked_mean(((r < 1.0 - eps_low) & (a < 0)).to(mask.dtype), mask)),
            "clip_frac_high": float(_masked_mean(((r > 1.0 + eps_high) & (a > 0)).to(mask.dtype), mask)),
            "ratio_mean": float(_masked_mean(r, mask)),
            "dual_clip_frac": 0.0,
        }
    if dual_clip_c is not None:
        bound = (-dual_clip_c * adv).expand_as(mask)
        negative = (adv < 0).expand_as(mask)
        dual_active = negative & (loss > bound)
        loss = torch.where(negative, torch.minimum(loss, bound), loss)
        metrics["dual_clip_frac"] = float(_masked_mean(dual_active.to(mask.dtype), mask))
    return loss, metrics


def _with_kl(
    loss: torch.Tensor,
    metrics: dict[str, float],
    logp: torch.Tensor,
    mask: torch.Tensor,
    ref_logp: torch.Tensor | None,
    beta: float,
    kl_estimator: str,
    kl_clamp: float | None,
) -> tuple[torch.Tensor, dict[str, float]]:
    if beta > 0:
        if ref_logp is None:
            raise ValueError("policy loss: beta > 0 needs ref_logp")
        kl = kl_estimate(logp, ref_logp, kl_estimator, kl_clamp)
        loss = loss + beta * kl
        metrics["kl_mean"] = float(_masked_mean(kl.detach(), mask))
    # torch.where, not a product: padded positions may hold inf/NaN log-probs and NaN * 0 is NaN.
    return torch.where(mask > 0, loss, torch.zeros_like(loss)), metrics


def _token_log_ratio(logp: torch.Tensor, old_logp: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    if old_logp is None:
        old_logp = logp.detach()
    return torch.where(mask > 0, logp - old_logp, torch.zeros_like(logp))


def _advantages(advantages: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    adv = advantages.to(device=like.device, dtype=like.dtype)
    return adv.unsqueeze(1) if adv.ndim == 1 else adv


@POLICY_LOSSES.register("ppo")
def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    dual_clip_c: float | None = None,
    ratio_clamp: float | None = None,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    kl_estimator: str = "k3",
    kl_clamp: float | None = None,
    is_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate per token, with clip-higher, dual clip and an optional KL penalty.

    Shapes: logp, old_logp, ref_logp, mask [B, T]; advantages [B] (one per completion) or [B, T].
    ratio = exp(clamp(logp - old_logp, -ratio_clamp, ratio_clamp));
    loss = -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A);
    for A < 0 with `dual_clip_c`: loss = min(loss, -c * A) (bounds the loss when the ratio explodes);
    plus beta * KL estimate per token when beta > 0 (see `mmrl.rl.kl` for what each estimator's gradient is).
    `old_logp=None` means fully on-policy (mu = 1, one mini-batch): logp.detach() is used, so the ratio is 1 and the
    gradient is that of A * logp. Returns (per_token_loss [B, T] with 0 on inactive tokens, metrics): clip_frac_low,
    clip_frac_high, dual_clip_frac, ratio_mean, and kl_mean when beta > 0 (all means over active tokens).
    `is_weight` [B, T] (no gradient; e.g. `truncated_is_weights`) multiplies the policy-gradient term, not the KL.
    """
    mask = mask.to(logp.dtype)
    loss, metrics = _surrogate(_token_log_ratio(logp, old_logp, mask), _advantages(advantages, logp), mask,
                               eps_low, eps_high, dual_clip_c, ratio_clamp)
    loss = loss if is_weight is None else loss * is_weight
    return _with_kl(loss, metrics, logp, mask, ref_logp, beta, kl_estimator, kl_clamp)


@POLICY_LOSSES.register("gspo")
def gspo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 3e-4,
    eps_high: float = 4e-4,
    dual_clip_c: float | None = None,
    ratio_clamp: float | None = None,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    kl_estimator: str = "k3",
    kl_clamp: float | None = None,
    is_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GSPO (Zheng et al., 2025): one importance ratio per sequence, s_i = exp(mean over its active tokens of
    logp - old_logp), clipped per sequence: loss_i = -min(s_i * A_i, clip(s_i, 1 - eps_low, 1 + eps_high) * A_i),
    written on every active token of sequence i (so the `grpo` aggregation gives the paper's mean over sequences).
    The gradient flows through s_i (TRL's importance_sampling_level="sequence"). Shapes and the rest as `policy_loss`;
    advantages must be one per completion, [B]. Clip fractions count a clipped sequence's tokens.
    """
    if advantages.ndim != 1:
        raise ValueError("gspo: advantages must be one per completion ([B]); got shape " f"{tuple(advantages.shape)}")
    mask = mask.to(logp.dtype)
    per_token = _token_log_ratio(logp, old_logp, mask)
    seq = (per_token * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)
    loss, metrics = _surrogate(seq, _advantages(advantages, logp), mask, eps_low, eps_high, dual_clip_c, ratio_clamp)
    loss = loss if is_weight is None else loss * is_weight
    return _with_kl(loss, metrics, logp, mask, ref_logp, beta, kl_estimator, kl_clamp)


def truncated_is_weights(old_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor,
                         cap: float | None) -> tuple[torch.Tensor, dict[str, float]]:
    """Truncated importance sampling (TIS) for the rollout/trainer mismatch, and how large the mismatch is.

    The completions were drawn by the rollout engine (log-probs `sampler_logp`), not by the trainer's forward of the
    same weights (`old_logp`): kernels, bf16 and image preprocessing differ. Per token, weight =
    min(exp(old_logp - sampler_logp), cap) (1 on inactive tokens; no cap when `cap` is None), to multiply the
    policy-gradient loss (TRL's vllm_importance_sampling_correction in token_truncate mode, verl's TIS).
    Shapes: [B, T] each. Metrics (means over active tokens): logprob_kl = k3 estimate of KL(sampler || trainer)
    from the sampled tokens (>= 0, 0 when they agree), logprob_abs_diff_max, tis_weight_mean, tis_clip_frac.

    >>> w, m = truncated_is_weights(torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.0, -4.0]]), torch.ones(1, 2), 2.0)
    >>> w.tolist(), m["tis_clip_frac"]
    ([[1.0, 2.0]], 0.5)
    """
    with torch.no_grad():
        active = mask > 0
        mask = mask.to(old_logp.dtype)
        diff = torch.where(active, old_logp.detach() - sampler_logp.to(old_logp), torch.zeros_like(old_logp))
        ratio = torch.exp(diff)
        weight = ratio.clamp(max=cap) if cap is not None else ratio
        k3 = ratio - 1 - diff  # KL(sampler || trainer) estimator on tokens drawn by the sampler
        metrics = {
            "logprob_kl": float(_masked_mean(k3, mask)),
            "logprob_abs_diff_max": float(diff.abs().max()) if diff.numel() else 0.0,
            "tis_weight_mean": float(_masked_mean(weight, mask)),
            "tis_clip_frac": float(_masked_mean((ratio > cap).to(mask.dtype), mask)) if cap is not None else 0.0,
        }
    return torch.where(active, weight, torch.ones_like(weight)), metrics


@AGGREGATIONS.register("grpo")
def aggregate_grpo(
    per_token_loss: torch.Tensor,
    mask: torch.Tensor,
    *,
    max_completion_length: int,
    global_active_tokens: float | None = None,
    global_num_sequences: int | None = None,
    global_micro_batches: int | None = None,
) -> torch.Tensor:
    """Token mean within each sequence, then the mean over sequences: sum_i(mean_t loss_it) / num_sequences.

    Sequences with no active token (e.g. masked truncated completions) contribute 0 but still count, as in TRL.
    num_sequences = `global_num_sequences` when given, else the local B. [B, T] -> scalar.
    """
    mask = mask.to(per_token_loss.dtype)
    per_seq = (per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    denom = global_num_sequences if global_num_sequences is not None else per_token_loss.shape[0]
    return per_seq.sum() / max(denom, 1)


@AGGREGATIONS.register("bnpo")
def aggregate_bnpo(
    per_token_loss: torch.Tensor,
    mask: torch.Tensor,
    *,
    max_completion_length: int,
    global_active_tokens: float | None = None,
    global_num_sequences: int | None = None,
    global_micro_batches: int | None = None,
) -> torch.Tensor:
    """Token mean of this micro-batch, divided by `global_micro_batches` (micro-batches of the step summed over all
    processes; 1 when None): the step's loss is the mean over its micro-batches of their token means, as TRL's bnpo
    under gradient accumulation and DDP. [B, T] -> scalar."""
    mask = mask.to(per_token_loss.dtype)
    local = (per_token_loss * mask).sum() / mask.sum().clamp(min=1)
    return local / max(global_micro_batches or 1, 1)


@AGGREGATIONS.register("dr_grpo")
def aggregate_dr_grpo(
    per_token_loss: torch.Tensor,
    mask: torch.Tensor,
    *,
    max_completion_length: int,
    global_active_tokens: float | None = None,
    global_num_sequences: int | None = None,
    global_micro_batches: int | None = None,
) -> torch.Tensor:
    """Sum over active tokens / (num_sequences * max_completion_length) — no length bias (Dr. GRPO).

    num_sequences = `global_num_sequences` when given, else the local B. [B, T] -> scalar.
    """
    mask = mask.to(per_token_loss.dtype)
    denom = global_num_sequences if global_num_sequences is not None else per_token_loss.shape[0]
    return (per_token_loss * mask).sum() / (max(denom, 1) * max_completion_length)


@AGGREGATIONS.register("dapo")
def aggregate_dapo(
    per_token_loss: torch.Tensor,
    mask: torch.Tensor,
    *,
    max_completion_length: int,
    global_active_tokens: float | None = None,
    global_num_sequences: int | None = None,
    global_micro_batches: int | None = None,
) -> torch.Tensor:
    """Sum over active tokens / `global_active_tokens` (active tokens of the whole global batch; see module doc).

    Falls back to the local active-token count when `global_active_tokens` is None. [B, T] -> scalar.
    """
    mask = mask.to(per_token_loss.dtype)
    denom = global_active_tokens if global_active_tokens is not None else float(mask.sum())
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
    """Look up `name` in AGGREGATIONS and apply it."""
    return AGGREGATIONS.get(name)(
        per_token_loss,
        mask,
        max_completion_length=max_completion_length,
        global_active_tokens=global_active_tokens,
        global_num_sequences=global_num_sequences,
        global_micro_batches=global_micro_batches,
    )


@dataclass(frozen=True)
class PolicyLoss:
    """The configured policy loss: the registered loss and aggregation with every algorithm setting they read, built
    once per update from the config (`from_config`), so the update passes tensors only.

    `beta` is the KL coefficient *in the loss*: 0 when the config puts the KL into the reward instead.

    >>> from mmrl.config.rl import AlgorithmConfig
    >>> PolicyLoss.from_config(AlgorithmConfig(beta=0.04, kl_penalty="reward")).beta
    0.0
    """

    name: str = "ppo"
    aggregation: str = "grpo"
    eps_low: float = 0.2
    eps_high: float = 0.2
    dual_clip_c: float | None = None
    ratio_clamp: float | None = None
    beta: float = 0.0
    kl_estimator: str = "k3"
    kl_clamp: float | None = None

    @classmethod
    def from_config(cls, algo: AlgorithmConfig) -> PolicyLoss:
        POLICY_LOSSES.get(algo.policy_loss)  # an unknown name fails here, with the valid ones
        AGGREGATIONS.get(algo.loss_aggregation)
        return cls(name=algo.policy_loss, aggregation=algo.loss_aggregation, eps_low=algo.eps_low,
                   eps_high=algo.eps_high, dual_clip_c=algo.dual_clip_c, ratio_clamp=algo.ratio_clamp,
                   beta=algo.beta if algo.beta > 0 and algo.kl_penalty == "loss" else 0.0,
                   kl_estimator=algo.resolved_kl_estimator, kl_clamp=algo.kl_clamp)

    def per_token(self, logp: torch.Tensor, old_logp: torch.Tensor | None, advantages: torch.Tensor,
                  mask: torch.Tensor, ref_logp: torch.Tensor | None = None,
                  is_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """The registered loss (`name`) with these settings; shapes and metrics as `policy_loss`."""
        return POLICY_LOSSES.get(self.name)(
            logp, old_logp, advantages, mask, eps_low=self.eps_low, eps_high=self.eps_high,
            dual_clip_c=self.dual_clip_c, ratio_clamp=self.ratio_clamp, ref_logp=ref_logp, beta=self.beta,
            kl_estimator=self.kl_estimator, kl_clamp=self.kl_clamp, is_weight=is_weight)

    def aggregate(self, per_token_loss: torch.Tensor, mask: torch.Tensor, *, max_completion_length: int,
                  global_active_tokens: float | None = None, global_num_sequences: int | None = None,
                  global_micro_batches: int | None = None) -> torch.Tensor:
        """The registered aggregation (`aggregation`) of a per-token loss [B, T] into a scalar (see `aggregate`)."""
        return aggregate(self.aggregation, per_token_loss, mask, max_completion_length=max_completion_length,
                         global_active_tokens=global_active_tokens, global_num_sequences=global_num_sequences,
                         global_micro_batches=global_micro_batches)


def loss_mask(completion_mask: torch.Tensor, truncated: torch.Tensor | None, mask_truncated: bool) -> torch.Tensor:
    """The mask the loss uses: `completion_mask` [B, T], with truncated completions ([B] bool) zeroed when asked."""
    if not mask_truncated or truncated is None:
        return completion_mask
    return completion_mask * (~truncated.bool()).to(completion_mask.dtype).unsqueeze(1)
