"""Entropy controls of the policy update: an entropy bonus, fixed or adaptive, and training on the highest-entropy
tokens only.

- **Bonus**: loss = policy loss - c * H, with H the mean entropy of the tempered next-token distribution over the
  tokens the loss trains on, over the whole global mini-batch (`Normalisers.global_entropy_tokens`: exact under
  micro-batches, token budgets and several processes, whatever the aggregation). `ENTROPY_CONTROLS` gives c:
  `fixed` (c = algorithm.entropy_coef) or `adaptive` (Skywork-OR1, He et al., 2025, section 4: c_{k+1} = c_k + delta
  when the step's entropy e_k <= target, else c_k - delta, kept in [coef_min, coef_max]; the bonus applies only while
  e_k <= target). The paper gates step k on its own entropy e_k, measured here on the step's rollouts before the
  update; TRL gates on the previous step's: mmrl follows the paper.
- **Top-entropy tokens** ("Beyond the 80/20 rule", Wang et al., 2025): with algorithm.top_entropy_quantile = q < 1
  only the tokens whose entropy is at or above the (1 - q) quantile of the step's active tokens (all processes)
  get a policy gradient (TRL's top_entropy_quantile; the aggregation's normalisers are unchanged, as in TRL).
Both read the entropies of the step's first forward (the rollout weights: the same as the training forward's when
mu = 1 and one mini-batch), so a token's selection and the step's e_k do not depend on how the step is cut.

>>> control = ENTROPY_CONTROLS.get("adaptive")(coef=0.0, target=0.2, delta=0.005, coef_min=0.0, coef_max=1.0)
>>> control.coefficient(0.1), control.observe(0.1), control.coef
(0.0, None, 0.005)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from mmrl.parallel.distributed import all_gather_objects, all_reduce_sum
from mmrl.registry import Registry

if TYPE_CHECKING:
    from mmrl.config.rl import AlgorithmConfig


@dataclass
class FixedEntropy:
    """A constant bonus coefficient (0: no bonus)."""

    coef: float = 0.0

    @classmethod
    def from_config(cls, algo: AlgorithmConfig) -> FixedEntropy:
        return cls(coef=algo.entropy_coef)

    @property
    def active(self) -> bool:
        """Whether a step may apply a bonus (then every group needs its training forward)."""
        return self.coef > 0

    @property
    def reads_entropy(self) -> bool:
        """Whether the coefficient depends on the step's measured entropy (then the step's first forward measures it)."""
        return False

    def coefficient(self, entropy: float) -> float:
        """The coefficient this step applies, given its measured mean entropy."""
        return self.coef

    def observe(self, entropy: float) -> None:
        """After a step measured `entropy`: nothing to adapt."""

    def state_dict(self) -> dict[str, Any]:
        """Nothing: a fixed coefficient is the config's (a resume that changes it, where allowed, must get it)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore (`state_dict`)."""


@dataclass
class AdaptiveEntropy(FixedEntropy):
    """Skywork-OR1's adaptive coefficient (module doc); `coef` is the current c_k."""

    target: float = 0.2
    delta: float = 0.005
    coef_min: float = 0.0
    coef_max: float = 1.0

    @classmethod
    def from_config(cls, algo: AlgorithmConfig) -> AdaptiveEntropy:
        return cls(coef=algo.entropy_coef, target=algo.entropy_target, delta=algo.entropy_coef_delta,
                   coef_min=algo.entropy_coef_min, coef_max=algo.entropy_coef_max)

    @property
    def active(self) -> bool:
        return True

    @property
    def reads_entropy(self) -> bool:
        return True

    def coefficient(self, entropy: float) -> float:
        return self.coef if entropy <= self.target else 0.0

    def observe(self, entropy: float) -> None:
        step = self.delta if entropy <= self.target else -self.delta
        self.coef = min(max(self.coef + step, self.coef_min), self.coef_max)

    def state_dict(self) -> dict[str, Any]:
        return {"control": "adaptive", "coef": self.coef}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The adapted c_k, when `state` is an adaptive control's; a fixed control's (a resume that switched to
        adaptive) leaves the config's starting value."""
        if state.get("control") == "adaptive":
            self.coef = float(state["coef"])


ENTROPY_CONTROLS: Registry[type[FixedEntropy]] = Registry("entropy control", "algorithm.entropy_control")
ENTROPY_CONTROLS.add("fixed", FixedEntropy)
ENTROPY_CONTROLS.add("adaptive", AdaptiveEntropy)


def entropy_control(algo: AlgorithmConfig) -> FixedEntropy:
    """The configured control (`algorithm.entropy_control`), in its initial state."""
    return ENTROPY_CONTROLS.get(algo.entropy_control).from_config(algo)


@dataclass(frozen=True)
class EntropyStep:
    """What one step's entropy controls decided before its training forwards."""

    coef: float = 0.0  # the bonus coefficient applied this step
    selection: dict[int, torch.Tensor] = field(default_factory=dict)  # group index -> [G, T] 1 on trained tokens
    metrics: dict[str, float] = field(default_factory=dict)

    def mask_of(self, key: int) -> torch.Tensor | None:
        return self.selection.get(key)


def top_entropy_mask(entropy: torch.Tensor, mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """1 where an active token's entropy is >= `threshold`, else 0: [B, T] -> [B, T] in the mask's float dtype."""
    return ((entropy >= threshold) & (mask > 0)).to(torch.float32)


def quantile_threshold(values: torch.Tensor | list[float], quantile: float) -> float:
    """The (1 - quantile) quantile of every process's active-token entropies, by linear interpolation in float32 as
    torch.quantile (TRL's) computes it, but from a sort: torch.quantile refuses more than 2**24 values, fewer than one
    step's tokens at scale. +inf when there are none (nothing is trained on)."""
    ordered = torch.as_tensor(values, dtype=torch.float32).flatten().sort().values  # cpu-ok: gathered host values
    if ordered.numel() == 0:
        return float("inf")
    rank = torch.tensor(1.0 - quantile, dtype=torch.float32) * (ordered.numel() - 1)  # cpu-ok: host scalar
    below = int(rank.floor())
    above = min(below + 1, ordered.numel() - 1)
    return float(torch.lerp(ordered[below], ordered[above], rank - below))


def plan_entropy(entropies: dict[int, torch.Tensor], masks: dict[int, torch.Tensor], control: FixedEntropy,
                 quantile: float, world: int) -> EntropyStep:
    """The step's coefficient (from its mean entropy over every process's active tokens; the control then adapts for
    the next step) and, when `quantile` < 1, each group's top-entropy token selection."""
    total = sum(float((entropies[k] * masks[k].to(entropies[k])).sum()) for k in entropies)
    tokens = sum(float(masks[k].sum()) for k in entropies)
    total, tokens = all_reduce_sum(total, world), all_reduce_sum(tokens, world)
    mean = total / max(tokens, 1.0)
    coef = control.coefficient(mean)
    control.observe(mean)
    metrics = {"entropy/rollout_mean": mean, "entropy/coef": coef}
    selection: dict[int, torch.Tensor] = {}
    if quantile < 1.0:
        local = [entropies[k][masks[k].to(entropies[k].device) > 0].detach().float().cpu() for k in entropies]
        local_values = torch.cat(local) if local else torch.zeros(0)  # cpu-ok: host values to gather
        threshold = quantile_threshold(torch.cat(all_gather_objects(local_values, world)), quantile)
        selection = {k: top_entropy_mask(entropies[k], masks[k], threshold) for k in entropies}
        kept = all_reduce_sum(sum(float(s.sum()) for s in selection.values()), world)
        metrics.update({"entropy/threshold": threshold, "entropy/trained_frac": kept / max(tokens, 1.0)})
    return EntropyStep(coef=coef, selection=selection, metrics=metrics)


def per_token_entropy(tap: list[torch.Tensor], completion_mask: torch.Tensor) -> torch.Tensor:
    """The entropies a `recording_entropy` block collected (active tokens, in order) as [G, T], 0 elsewhere
    (differentiable when they are)."""
    flat = torch.cat(tap)
    active = completion_mask.to(flat.device).bool()
    return flat.new_zeros(active.shape).masked_scatter(active, flat)


def entropy_bonus(entropy: torch.Tensor, trained: torch.Tensor, coef: float, global_tokens: float) -> torch.Tensor:
    """-coef * sum of `entropy` over the `trained` tokens [B, T] / `global_tokens` (the global mini-batch's trained
    tokens): this micro-batch's share of -coef * H, to add to its aggregated loss."""
    active = trained > 0
    masked = torch.where(active, entropy, torch.zeros_like(entropy))
    return -coef * masked.sum() / max(global_tokens, 1.0)
