"""Group-relative advantage estimators: pure functions from rewards and group ids to per-completion advantages.

Every estimator has the signature
    fn(rewards: Tensor[N] float, group_ids: Tensor[N] long, *, scale: bool | None, eps: float,
       token_counts: Tensor[N] | None = None, all_reduce: SumFn | None = None) -> Tensor[N] float
where completions with the same `group_ids` value were sampled from the same prompt (ids need not be contiguous).
`scale=None` means the estimator's own convention (grpo divides by the group std; rloo and dr_grpo do not).
`token_counts` (active tokens per completion) and `all_reduce` (sums a float64 tensor over all processes) are
used only by estimators with batch-level statistics (reinforce_pp, gdpo); the others are local to each group.
`components` [N, K] (each reward's score, NaN when unscorable) and `component_weights` [K] are read by gdpo only.

Conventions shared by all estimators:
- **Unscorable rewards arrive as NaN.** They get advantage 0 (so they contribute no policy gradient) and are left out
  of every statistic: group means, stds and RLOO baselines use only the scorable members of the group.
- **Group std is the unbiased (n-1) sample std**, as `torch.std` computes it and as TRL's GRPOTrainer uses. A group
  with a single scorable member has std 0 (not NaN) and advantage 0.
- Statistics are computed in float64 and returned in the rewards' dtype.

>>> import torch
>>> grpo_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([0, 0, 1, 1]), scale=False, eps=1e-4)
tensor([ 0.5000, -0.5000,  0.0000,  0.0000])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from mmrl.errors import UserError
from mmrl.registry import Registry

AdvantageFn = Callable[..., torch.Tensor]
SumFn = Callable[[torch.Tensor], torch.Tensor]
ADVANTAGES: Registry[AdvantageFn] = Registry("advantage estimator", "algorithm.advantage")


@dataclass
class _Groups:
    """Per-group sums over the scorable members, indexed back to each completion."""

    index: torch.Tensor  # [N] dense group index
    valid: torch.Tensor  # [N] bool, reward is not NaN
    values: torch.Tensor  # [N] float64, NaN replaced by 0
    count: torch.Tensor  # [N] float64, scorable members in my group
    mean: torch.Tensor  # [N] float64, mean of the scorable members of my group (0 if none)
    std: torch.Tensor  # [N] float64, unbiased std of my group (0 if fewer than 2 members)
    num_groups: int


def _groups(rewards: torch.Tensor, group_ids: torch.Tensor) -> _Groups:
    if rewards.ndim != 1 or group_ids.shape != rewards.shape:
        raise ValueError(f"rewards and group_ids must both be [N]; got {tuple(rewards.shape)}, {tuple(group_ids.shape)}")
    _, index = torch.unique(group_ids, return_inverse=True)
    num_groups = int(index.max()) + 1 if index.numel() else 0
    valid = ~torch.isnan(rewards)
    values = torch.where(valid, rewards, 0).double()
    weight = valid.double()
    count = torch.zeros(num_groups, dtype=torch.float64, device=rewards.device).index_add_(0, index, weight)
    total = torch.zeros(num_groups, dtype=torch.float64, device=rewards.device).index_add_(0, index, values)
    mean = total / count.clamp(min=1)
    centred = (values - mean[index]) * weight
    sq = torch.zeros(num_groups, dtype=torch.float64, device=rewards.device).index_add_(0, index, centred.square())
    std = torch.where(count > 1, (sq / (count - 1).clamp(min=1)).sqrt(), torch.zeros_like(sq))
    return _Groups(index, valid, values, count[index], mean[index], std[index], num_groups)


def _scaled(adv: torch.Tensor, std: torch.Tensor, eps: float) -> torch.Tensor:
    """adv / (std + eps); 0 where the denominator is 0 (a zero-std group with eps=0 has adv 0 anyway, not 0/0)."""
    denom = std + eps
    return torch.where(denom > 0, adv / denom.clamp(min=1e-300), torch.zeros_like(adv))


def _finish(adv: torch.Tensor, groups: _Groups, like: torch.Tensor) -> torch.Tensor:
    return torch.where(groups.valid, adv, torch.zeros_like(adv)).to(like.dtype)


@ADVANTAGES.register("grpo")
def grpo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, *, scale: bool | None = True, eps: float = 1e-4,
                    **_: Any) -> torch.Tensor:
    """GRPO: (r - group mean) / (group std + eps) when `scale` (default), else r - group mean. [N] -> [N]."""
    g = _groups(rewards, group_ids)
    adv = g.values - g.mean
    if scale is None or scale:
        adv = _scaled(adv, g.std, eps)
    return _finish(adv, g, rewards)


@ADVANTAGES.register("dr_grpo")
def dr_grpo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, *, scale: bool | None = False, eps: float = 1e-4,
                       **_: Any) -> torch.Tensor:
    """Dr. GRPO: r - group mean, never divided by the std (`scale` is ignored by design). [N] -> [N]."""
    g = _groups(rewards, group_ids)
    return _finish(g.values - g.mean, g, rewards)


@ADVANTAGES.register("rloo")
def rloo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, *, scale: bool | None = False, eps: float = 1e-4,
                    **_: Any) -> torch.Tensor:
    """RLOO: r_i - mean of the *other* scorable members of its group; divided by (group std + eps) only when `scale`
    is True (RLOO itself never divides by the std; None and False leave it unscaled).

    Equals n/(n-1) * (r_i - group mean); a group with one scorable member gets 0. [N] -> [N].
    """
    g = _groups(rewards, group_ids)
    others = (g.count - 1).clamp(min=1)
    baseline = (g.mean * g.count - g.values) / others
    adv = torch.where(g.count > 1, g.values - baseline, torch.zeros_like(baseline))
    if scale:
        adv = _scaled(adv, g.std, eps)
    return _finish(adv, g, rewards)


@ADVANTAGES.register("reinforce_pp")
def reinforce_pp_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    scale: bool | None = None,
    eps: float = 1e-4,
    token_counts: torch.Tensor | None = None,
    all_reduce: SumFn | None = None,
    **_: Any,
) -> torch.Tensor:
    """REINFORCE++-baseline: subtract the group mean, then whiten over the whole global batch, token-level.

    a_i = r_i - group mean; A_i = (a_i - m) / (s + eps), where m and s (unbiased) are the mean and std of a over every
    active token of the global batch — completion i counts `token_counts[i]` times, as verl and OpenRLHF whiten the
    token-level advantages — summed over all processes through `all_reduce` (None: this batch only). Without
    `token_counts` every completion counts once. `scale` is ignored (the whitening replaces the group std). [N] -> [N].
    """
    g = _groups(rewards, group_ids)
    centred = g.values - g.mean
    weight = g.valid.double() if token_counts is None else token_counts.double() * g.valid.double()
    moments = torch.stack([weight.sum(), (weight * centred).sum(), (weight * centred.square()).sum()])
    if all_reduce is not None:
        moments = all_reduce(moments)
    count, total, squares = (float(x) for x in moments)
    if count < 2:
        return _finish(torch.zeros_like(centred), g, rewards)
    mean = total / count
    var = max(squares - count * mean * mean, 0.0) / (count - 1)
    adv = _scaled(centred - mean, torch.full_like(centred, var ** 0.5), eps)
    return _finish(adv, g, rewards)


@ADVANTAGES.register("gdpo")
def gdpo_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    scale: bool | None = None,
    eps: float = 1e-4,
    components: torch.Tensor | None = None,
    component_weights: torch.Tensor | None = None,
    all_reduce: SumFn | None = None,
    **_: Any,
) -> torch.Tensor:
    """GDPO (Liu et al., 2026, "Group reward-Decoupled Normalization Policy Optimization"): normalise each reward
    component within its group, sum them with the rewards' weights, then normalise the sum over the global batch.

    components [N, K] (NaN = that reward could not score the completion), component_weights [K]:
    s_i = sum_k w_k * (c_ik - group mean_k) / (group std_k + eps), a component's NaN counting 0 and left out of its
    group's statistics; A_i = (s_i - m) / (sd + eps) with m and sd (unbiased) over every scorable completion of the
    global batch (summed over processes through `all_reduce`), as TRL's multi_objective_aggregation=
    "normalize_then_sum". Without `components` the total reward is the one component. `scale=False` keeps the sum's batch centring without the division. A completion whose total
    reward is NaN gets 0 and is left out of every statistic, as with every estimator. [N] -> [N].
    """
    if components is None or component_weights is None:  # one reward: the total, weight 1
        components, component_weights = rewards.unsqueeze(1), torch.ones(1, device=rewards.device)
    summed = torch.zeros_like(rewards, dtype=torch.float64)
    # an unscorable completion (NaN total) stays out of every reward's group statistics too
    components = torch.where(torch.isnan(rewards).unsqueeze(1), math.nan, components.double())
    for k in range(components.shape[1]):
        if float(component_weights[k]) == 0:
            continue  # a zero-weight reward is reported, never learned from (as in the weighted total)
        if bool((torch.isnan(components[:, k]) & ~torch.isnan(rewards)).any()):
            # the total counts every non-zero-weight reward, so its score exists: these components are not the ones
            # that made the total (a rollout that reports only a total), and normalising them would silently give 0
            raise UserError(f"algorithm.advantage gdpo: reward {k + 1} of `rewards:` has no score for a completion "
                            "whose total reward is known (this rollout reports only totals); use another advantage")
        normalised = grpo_advantages(components[:, k].double(), group_ids, scale=True, eps=eps)
        summed = summed + float(component_weights[k]) * normalised  # NaN components came back as 0
    g = _groups(torch.where(torch.isnan(rewards), rewards.double(), summed), group_ids)
    moments = torch.stack([g.valid.double().sum(), g.values.sum(), g.values.square().sum()])
    if all_reduce is not None:
        moments = all_reduce(moments)
    count, total, squares = (float(x) for x in moments)
    if count < 1:
        return _finish(torch.zeros_like(g.values), g, rewards)
    mean = total / count
    adv = g.values - mean
    if scale is None or scale:
        var = max(squares - count * mean * mean, 0.0) / (count - 1) if count > 1 else 0.0
        adv = _scaled(adv, torch.full_like(adv, var**0.5), eps)
    return _finish(adv, g, rewards)


def compute_advantages(
    name: str,
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    scale: bool | None,
    eps: float,
    token_counts: torch.Tensor | None = None,
    all_reduce: SumFn | None = None,
    components: torch.Tensor | None = None,
    component_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Look up `name` in ADVANTAGES and apply it (`components` [N, K] and their weights [K]: the estimators that
    read each reward apart, gdpo)."""
    return ADVANTAGES.get(name)(rewards, group_ids, scale=scale, eps=eps, token_counts=token_counts,
                                all_reduce=all_reduce, components=components, component_weights=component_weights)
