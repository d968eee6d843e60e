"""The policy-gradient loss per token: one `LossInputs` in, one `LossOutput` out, each loss a small registered
function of (inputs, settings); `PolicyLoss` holds the configured loss, aggregation and settings.

A loss returns a per-token loss [B, T] (already 0 on inactive positions); an aggregation from `AGGREGATIONS`
(`mmrl.rl.aggregations`, where the normaliser contract for accumulation and several processes is written down) turns
it into the scalar to backpropagate. The trainer picks both by name; nothing here branches on the algorithm. What
every loss shares — the importance-sampling weight on the policy-gradient term, the KL penalty, zero on inactive
positions — is applied once, after the registered function (`PolicyLossEntry.loss`).

>>> import torch
>>> out = policy_loss(torch.tensor([[-1.0, -2.0]]), None, torch.tensor([2.0]), torch.tensor([[1, 0]]))
>>> out.per_token.tolist()  # on-policy: ratio 1, loss -A on the active token, 0 on padding
[[-2.0, 0.0]]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, NamedTuple

import torch

from mmrl.registry import Registry
from mmrl.rl.aggregations import AGGREGATIONS, Normalisers, aggregate
from mmrl.rl.kl import kl_estimate
from mmrl.rl.mismatch import truncated_is_weights

if TYPE_CHECKING:
    from mmrl.config.rl import AlgorithmConfig

__all__ = ["AGGREGATIONS", "POLICY_LOSSES", "LossInputs", "LossOutput", "LossSettings", "Normalisers", "PolicyLoss",
           "aggregate", "loss_mask", "policy_loss", "truncated_is_weights"]


@dataclass(frozen=True)
class LossInputs:
    """One micro-batch's tensors. Shapes: logp, old_logp, ref_logp, mask [B, T]; advantages [B] (one per completion)
    or [B, T]. `old_logp=None` means fully on-policy (mu = 1, one mini-batch): logp.detach() is used, so the ratio is
    1. `is_weight` [B, T] (no gradient; e.g. `truncated_is_weights`) multiplies the policy-gradient term, not the KL."""

    logp: torch.Tensor
    old_logp: torch.Tensor | None
    advantages: torch.Tensor
    mask: torch.Tensor
    ref_logp: torch.Tensor | None = None
    is_weight: torch.Tensor | None = None
    sampler_logp: torch.Tensor | None = None  # [B, T] the rollout engine's log-probs (off-policy sequence mask)
    entropy_mask: torch.Tensor | None = None  # [B, T] 1 on the tokens the policy gradient trains (top-entropy tokens)


class LossOutput(NamedTuple):
    """Per-token loss [B, T] (0 on inactive tokens) and the loss-side metrics (means over active tokens)."""

    per_token: torch.Tensor
    metrics: dict[str, float]


@dataclass(frozen=True)
class LossSettings:
    """The algorithm's loss settings (`algorithm.*`; see `mmrl.config.rl.AlgorithmConfig` for each field)."""

    eps_low: float = 0.2
    eps_high: float = 0.2
    dual_clip_c: float | None = None
    ratio_clamp: float | None = None
    beta: float = 0.0
    kl_estimator: str = "k3"
    kl_clamp: float | None = None
    sapo_tau_pos: float = 1.0
    sapo_tau_neg: float = 1.05
    off_policy_mask_threshold: float | None = None


LossFn = Callable[[LossInputs, LossSettings], LossOutput]


@dataclass(frozen=True)
class PolicyLossEntry:
    """A registered policy loss: its policy-gradient term `compute(inputs, settings)`, and the settings it defaults to
    when called by keywords. Called with tensors and keywords it is the loss as a plain function (tests, notebooks)."""

    compute: LossFn
    defaults: LossSettings = LossSettings()

    def loss(self, inputs: LossInputs, settings: LossSettings) -> LossOutput:
        """The policy-gradient term, times `inputs.is_weight`, the top-entropy token mask and the off-policy sequence
        mask (each when given), plus beta * KL; 0 on inactive tokens."""
        pg, metrics = self.compute(inputs, settings)
        metrics = dict(metrics)
        for factor in (inputs.is_weight, inputs.entropy_mask):
            pg = pg if factor is None else pg * factor.to(pg)
        if settings.off_policy_mask_threshold is not None:
            keep = off_policy_sequence_mask(inputs, settings.off_policy_mask_threshold)
            pg = pg * keep
            metrics["off_policy_masked_frac"] = float(_masked_mean(1 - keep.expand_as(pg), inputs.mask.to(pg.dtype)))
        return _with_kl(pg, metrics, inputs, settings)

    def __call__(self, logp: torch.Tensor, old_logp: torch.Tensor | None, advantages: torch.Tensor,
                 mask: torch.Tensor, *, ref_logp: torch.Tensor | None = None, is_weight: torch.Tensor | None = None,
                 sampler_logp: torch.Tensor | None = None, entropy_mask: torch.Tensor | None = None,
                 **settings: float | str | None) -> LossOutput:
        return self.loss(LossInputs(logp, old_logp, advantages, mask, ref_logp, is_weight, sampler_logp, entropy_mask),
                         replace(self.defaults, **settings))


POLICY_LOSSES: Registry[PolicyLossEntry] = Registry("policy loss", "algorithm.policy_loss")


def register_loss(name: str, **defaults: float | str | None) -> Callable[[LossFn], PolicyLossEntry]:
    """Register `compute` under `name` (with `defaults` over `LossSettings`'s when called by keywords)."""

    def decorator(compute: LossFn) -> PolicyLossEntry:
        entry = PolicyLossEntry(compute, LossSettings(**defaults))
        POLICY_LOSSES.add(name, entry)
        return entry

    return decorator


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


def _with_kl(loss: torch.Tensor, metrics: dict[str, float], inputs: LossInputs,
             settings: LossSettings) -> LossOutput:
    mask = inputs.mask.to(inputs.logp.dtype)
    if settings.beta > 0:
        if inputs.ref_logp is None:
            raise ValueError("policy loss: beta > 0 needs ref_logp")
        kl = kl_estimate(inputs.logp, inputs.ref_logp, settings.kl_estimator, settings.kl_clamp)
        loss = loss + settings.beta * kl
        metrics["kl_mean"] = float(_masked_mean(kl.detach(), mask))
    # torch.where, not a product: padded positions may hold inf/NaN log-probs and NaN * 0 is NaN.
    return LossOutput(torch.where(mask > 0, loss, torch.zeros_like(loss)), metrics)


def _token_log_ratio(inputs: LossInputs) -> torch.Tensor:
    logp, mask = inputs.logp, inputs.mask
    old_logp = inputs.old_logp if inputs.old_logp is not None else logp.detach()
    return torch.where(mask > 0, logp - old_logp, torch.zeros_like(logp))


def _advantages(inputs: LossInputs) -> torch.Tensor:
    adv = inputs.advantages.to(device=inputs.logp.device, dtype=inputs.logp.dtype)
    return adv.unsqueeze(1) if adv.ndim == 1 else adv


@register_loss("ppo")
def ppo_loss(inputs: LossInputs, s: LossSettings) -> LossOutput:
    """PPO clipped surrogate per token, with clip-higher, dual clip and an optional KL penalty.

    ratio = exp(clamp(logp - old_logp, -ratio_clamp, ratio_clamp));
    loss = -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A);
    for A < 0 with `dual_clip_c`: loss = min(loss, -c * A) (bounds the loss when the ratio explodes);
    plus beta * KL estimate per token when beta > 0 (see `mmrl.rl.kl` for what each estimator's gradient is).
    With `old_logp=None` the ratio is 1 and the gradient is that of A * logp. Metrics: clip_frac_low,
    clip_frac_high, dual_clip_frac, ratio_mean, and kl_mean when beta > 0 (all means over active tokens).
    """
    mask = inputs.mask.to(inputs.logp.dtype)
    return LossOutput(*_surrogate(_token_log_ratio(inputs), _advantages(inputs), mask, s.eps_low, s.eps_high,
                                  s.dual_clip_c, s.ratio_clamp))


@register_loss("gspo", eps_low=3e-4, eps_high=4e-4)
def gspo_loss(inputs: LossInputs, s: LossSettings) -> LossOutput:
    """GSPO (Zheng et al., 2025): one importance ratio per sequence, s_i = exp(mean over its active tokens of
    logp - old_logp), clipped per sequence: loss_i = -min(s_i * A_i, clip(s_i, 1 - eps_low, 1 + eps_high) * A_i),
    written on every active token of sequence i (so the `grpo` aggregation gives the paper's mean over sequences).
    The gradient flows through s_i (TRL's importance_sampling_level="sequence"). Advantages must be one per
    completion, [B]. Clip fractions count a clipped sequence's tokens.
    """
    if inputs.advantages.ndim != 1:
        raise ValueError(f"gspo: advantages must be one per completion ([B]); got shape {tuple(inputs.advantages.shape)}")
    mask = inputs.mask.to(inputs.logp.dtype)
    seq = (_token_log_ratio(inputs) * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)
    return LossOutput(*_surrogate(seq, _advantages(inputs), mask, s.eps_low, s.eps_high, s.dual_clip_c,
                                  s.ratio_clamp))


def _ratio(inputs: LossInputs, s: LossSettings) -> torch.Tensor:
    """Per-token importance ratio exp(clamp(logp - old_logp, -ratio_clamp, ratio_clamp)), with its gradient."""
    log_ratio = _token_log_ratio(inputs)
    return torch.exp(log_ratio if s.ratio_clamp is None else log_ratio.clamp(-s.ratio_clamp, s.ratio_clamp))


def _ratio_metrics(ratio: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, low: float, high: float,
                   ) -> dict[str, float]:
    with torch.no_grad():
        r, a = ratio.expand_as(mask), adv.expand_as(mask)
        return {"clip_frac_low": float(_masked_mean(((r < low) & (a < 0)).to(mask.dtype), mask)),
                "clip_frac_high": float(_masked_mean(((r > high) & (a > 0)).to(mask.dtype), mask)),
                "ratio_mean": float(_masked_mean(r, mask))}


@register_loss("cispo", eps_low=1.0, eps_high=4.0)
def cispo_loss(inputs: LossInputs, s: LossSettings) -> LossOutput:
    """CISPO (MiniMax-M1, Chen et al., 2025, eq. 4): the clipped importance weight as a stop-gradient coefficient,
    loss_t = -sg(clip(r_t, 1 - eps_low, 1 + eps_high)) * A * logp_t, so every token keeps a gradient
    sg(w_t) * A * grad logp_t (PPO's clip zeroes the clipped tokens' gradient instead).

    The paper writes the bounds as 1 - eps_low and 1 + eps_high and sets no lower bound (eps_low large: 1.0 here makes
    the weight's floor 0); TRL's `cispo` caps at `epsilon_high` itself (ScaleRL's eps_max = 5), i.e. this loss with
    eps_high = eps_max - 1. The keyword defaults (1.0, 4.0) are those. Metrics: clip_frac_low / clip_frac_high
    (weights clipped where A < 0 / A > 0), ratio_mean.
    """
    mask, adv = inputs.mask.to(inputs.logp.dtype), _advantages(inputs)
    ratio = _ratio(inputs, s)
    weight = ratio.clamp(1.0 - s.eps_low, 1.0 + s.eps_high).detach()
    logp = torch.where(inputs.mask > 0, inputs.logp, torch.zeros_like(inputs.logp))
    return LossOutput(-weight * adv * logp, _ratio_metrics(ratio, adv, mask, 1.0 - s.eps_low, 1.0 + s.eps_high))


@register_loss("sapo")
def sapo_loss(inputs: LossInputs, s: LossSettings) -> LossOutput:
    """SAPO (Gao et al., 2025, "Soft Adaptive Policy Optimization"): a sigmoid gate instead of the hard clip,
    loss_t = -(4 / tau) * sigmoid(tau * (r_t - 1)) * A with tau = sapo_tau_pos where A > 0, else sapo_tau_neg.

    At r = 1 the gradient is -A * grad logp (as PPO's); it decays smoothly as r leaves 1, faster for negative
    advantages (tau_neg > tau_pos: the paper's 1.05 against 1.0). Metrics: ratio_mean, and gate_mean (the mean of
    4 * sigmoid' = 4 s (1 - s): the fraction of the on-policy gradient a token keeps; 1 at r = 1).
    """
    mask, adv = inputs.mask.to(inputs.logp.dtype), _advantages(inputs)
    ratio = _ratio(inputs, s)
    tau = torch.where(adv > 0, s.sapo_tau_pos, s.sapo_tau_neg).to(ratio.dtype)
    gate = torch.sigmoid(tau * (ratio - 1.0))
    loss = (-(4.0 / tau) * gate * adv).expand_as(mask)
    with torch.no_grad():
        metrics = {"ratio_mean": float(_masked_mean(ratio.expand_as(mask), mask)),
                   "gate_mean": float(_masked_mean((4 * gate * (1 - gate)).expand_as(mask), mask))}
    return LossOutput(loss, metrics)


@register_loss("gmpo", eps_low=0.4, eps_high=0.4)
def gmpo_loss(inputs: LossInputs, s: LossSettings) -> LossOutput:
    """GMPO (Zhao et al., 2025, "Geometric-Mean Policy Optimization", eq. 5): the geometric mean of the clipped token
    ratios, loss_i = -A_i * prod_t min(r_t, clip(r_t, e^-eps_low, e^eps_high)) ^ (1 / |o_i|) for A_i > 0 (max for
    A_i < 0), computed in log space and written on every active token of sequence i (so `grpo` aggregation gives the
    paper's mean over sequences). eps_low / eps_high bound the *log* ratio: the paper's range is (e^-0.4, e^0.4).

    The paper clips r_t to [e^-eps_low, e^eps_high] whatever the sign of A; its reference code clips sgn(A) * log r_t
    to [-eps_low, eps_high], which swaps the bounds for A < 0. With the paper's symmetric default both agree; this
    follows the paper (tests cover both readings). Advantages must be one per completion, [B]. Metrics: clip fractions
    (tokens whose log-ratio left the range in the clipped direction), ratio_mean (the sequence ratio per token).
    """
    if inputs.advantages.ndim != 1:
        raise ValueError(f"gmpo: advantages must be one per completion ([B]); got shape {tuple(inputs.advantages.shape)}")
    mask, adv = inputs.mask.to(inputs.logp.dtype), _advantages(inputs)
    log_ratio = _token_log_ratio(inputs)
    clipped = log_ratio.clamp(-s.eps_low, s.eps_high)
    # A > 0: min(r A, clip(r) A) keeps the smaller log-ratio; A < 0: the larger. A = 0 contributes 0 either way.
    kept = torch.where(adv > 0, torch.minimum(log_ratio, clipped), torch.maximum(log_ratio, clipped))
    seq = torch.exp((kept * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1))
    metrics = _ratio_metrics(torch.exp(log_ratio), adv, mask, math.exp(-s.eps_low), math.exp(s.eps_high))
    metrics["ratio_mean"] = float(_masked_mean(seq.detach().expand_as(mask), mask))
    return LossOutput((-adv * seq).expand_as(mask), metrics)


def off_policy_sequence_mask(inputs: LossInputs, threshold: float) -> torch.Tensor:
    """DeepSeek-V3.2's off-policy sequence mask (DeepSeek-AI, 2025, eq. 9): 0 for a completion with A < 0 whose mean
    over its tokens of log(pi_behaviour / pi_theta) exceeds `threshold` (delta), else 1. [B, 1], no gradient.

    The behaviour policy is the rollout engine's (`sampler_logp`), else the old policy's (`old_logp`), else this
    forward's (on-policy: the KL is 0 and nothing is masked), as TRL's off_policy_mask_threshold. A row never spans
    two micro-batches, so the mask is the same whatever the token budget.
    """
    logp = inputs.logp.detach()
    behaviour = next((x for x in (inputs.sampler_logp, inputs.old_logp) if x is not None), logp)
    mask = inputs.mask.to(logp.dtype)
    gap = torch.where(inputs.mask > 0, behaviour.to(logp) - logp, torch.zeros_like(logp))
    gap = torch.nan_to_num(gap, nan=0.0)  # a token the engine could not score is no evidence of drift (as TRL)
    mean_kl = (gap * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)
    adv = _advantages(inputs)
    adv = adv if adv.shape[-1] == 1 else adv[:, :1]
    return ((adv >= 0) | (mean_kl <= threshold)).to(logp.dtype)


@dataclass(frozen=True)
class PolicyLoss(LossSettings):
    """The configured policy loss: the registered loss and aggregation with every algorithm setting they read, built
    once per update from the config (`from_config`), so the update passes one `LossInputs` and gets a `LossOutput`.

    `beta` is the KL coefficient *in the loss*: 0 when the config puts the KL into the reward instead.

    >>> from mmrl.config.rl import AlgorithmConfig
    >>> PolicyLoss.from_config(AlgorithmConfig(beta=0.04, kl_penalty="reward")).beta
    0.0
    """

    name: str = "ppo"
    aggregation: str = "grpo"

    @classmethod
    def from_config(cls, algo: AlgorithmConfig) -> PolicyLoss:
        POLICY_LOSSES.get(algo.policy_loss)  # an unknown name fails here, with the valid ones
        AGGREGATIONS.get(algo.loss_aggregation)
        return cls(name=algo.policy_loss, aggregation=algo.loss_aggregation, eps_low=algo.eps_low,
                   eps_high=algo.eps_high, dual_clip_c=algo.dual_clip_c, ratio_clamp=algo.ratio_clamp,
                   beta=algo.beta if algo.beta > 0 and algo.kl_penalty == "loss" else 0.0,
                   kl_estimator=algo.resolved_kl_estimator, kl_clamp=algo.kl_clamp, sapo_tau_pos=algo.sapo_tau_pos,
                   sapo_tau_neg=algo.sapo_tau_neg, off_policy_mask_threshold=algo.off_policy_mask_threshold)

    @property
    def settings(self) -> LossSettings:
        """The loss settings alone (what the registered function reads)."""
        return LossSettings(**{f.name: getattr(self, f.name) for f in fields(LossSettings)})

    def __call__(self, inputs: LossInputs) -> LossOutput:
        """The registered loss (`name`) of one micro-batch with these settings."""
        return POLICY_LOSSES.get(self.name).loss(inputs, self.settings)

    def per_token(self, logp: torch.Tensor, old_logp: torch.Tensor | None, advantages: torch.Tensor,
                  mask: torch.Tensor, ref_logp: torch.Tensor | None = None,
                  is_weight: torch.Tensor | None = None, sampler_logp: torch.Tensor | None = None) -> LossOutput:
        """`self(LossInputs(...))` by keywords."""
        return self(LossInputs(logp, old_logp, advantages, mask, ref_logp, is_weight, sampler_logp))

    def aggregate(self, per_token_loss: torch.Tensor, mask: torch.Tensor, norms: Normalisers | None = None,
                  **counts: float | int | None) -> torch.Tensor:
        """The registered aggregation (`aggregation`) of a per-token loss [B, T] into a scalar, normalised by `norms`
        (or the same counts as keywords: max_completion_length, global_active_tokens, ...; see `aggregate`)."""
        norms = norms if norms is not None else Normalisers(**counts)  # type: ignore[arg-type]
        return AGGREGATIONS.get(self.aggregation)(per_token_loss, mask, norms)


policy_loss = POLICY_LOSSES.get("ppo")  # the PPO loss as a keyword function: policy_loss(logp, old, adv, mask, ...)


def loss_mask(completion_mask: torch.Tensor, truncated: torch.Tensor | None, mask_truncated: bool) -> torch.Tensor:
    """The mask the loss uses: `completion_mask` [B, T], with truncated completions ([B] bool) zeroed when asked."""
    if not mask_truncated or truncated is None:
        return completion_mask
    return completion_mask * (~truncated.bool()).to(completion_mask.dtype).unsqueeze(1)
