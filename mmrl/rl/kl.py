"""Per-token estimators of the KL between the policy pi and the reference (Schulman, "Approximating KL divergence",
2020), for tokens y sampled from pi.

With `d = ref_logp - logp` (log of ref/pi at the sampled token):
- k1 = -d = logp - ref_logp: unbiased for KL(pi||ref), high variance, can be negative. As a *loss* term its gradient
  is grad log pi, whose expectation under pi is 0: it only adds noise, so mmrl accepts k1 only in the reward
  (`algorithm.kl_penalty=reward`), where it is a value, not something differentiated.
- k2 = d**2 / 2: biased, >= 0. Gradient (logp - ref_logp) * grad log pi; under pi its expectation is exactly
  grad KL(pi||ref) = E_pi[(log pi - log ref) grad log pi].
- k3 = exp(d) - d - 1: unbiased for KL(pi||ref), >= 0 (the GRPO paper's choice). Gradient (1 - ref/pi) grad log pi;
  under pi its expectation is -E_ref[grad log pi] = grad KL(ref||pi) — the gradient of the *reverse* KL, not of
  KL(pi||ref). Near pi = ref both gradients agree to first order.
- low_var_kl: verl's name for k3 with d clamped to [-20, 20] and the value clamped to [-10, 10] (whatever kl_clamp).
The expectations above hold on-policy; with mu > 1 the tokens come from the rollout policy, not the current one.

>>> import torch
>>> kl_estimate(torch.tensor([[0.0]]), torch.tensor([[-1.0]]), "k1")
tensor([[1.]])
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mmrl.registry import Registry

# exp() of a log-ratio above this overflows float16/bfloat16 ranges; clamping it keeps gradients finite
# (a clamp *after* an overflowed exp gives 0 * inf = NaN in backward). Values this far out are never "exact" anyway.
MAX_LOG_RATIO = 20.0
LOW_VAR_KL_BOUND = 10.0


def _k1(d: torch.Tensor) -> torch.Tensor:
    return -d


def _k2(d: torch.Tensor) -> torch.Tensor:
    return 0.5 * d.square()


def _k3(d: torch.Tensor) -> torch.Tensor:
    d = d.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    return torch.exp(d) - d - 1.0


def _low_var_kl(d: torch.Tensor) -> torch.Tensor:
    return _k3(d).clamp(-LOW_VAR_KL_BOUND, LOW_VAR_KL_BOUND)


KL_ESTIMATORS: Registry[Callable[[torch.Tensor], torch.Tensor]] = Registry("KL estimator", "algorithm.kl_estimator")
for _name, _fn in (("k1", _k1), ("k2", _k2), ("k3", _k3), ("low_var_kl", _low_var_kl)):
    KL_ESTIMATORS.add(_name, _fn)
# Estimators whose gradient, as a loss term, is a KL gradient (k1's is 0 in expectation).
LOSS_ESTIMATORS = ("k2", "k3", "low_var_kl")


def kl_estimate(
    logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k3", clamp: float | None = None
) -> torch.Tensor:
    """Per-token KL estimate, shape of `logp` ([B, T]); clamped to [-clamp, clamp] when `clamp` is set.

    `ref_logp` carries no gradient (it comes from the frozen reference); gradients flow through `logp`.
    """
    kl = KL_ESTIMATORS.get(estimator)(ref_logp.detach() - logp)
    if clamp is not None:
        kl = kl.clamp(-clamp, clamp)
    return kl


def sequence_kl(
    logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, estimator: str = "k1", clamp: float | None = None
) -> torch.Tensor:
    """Sum of the per-token estimate over each completion's active tokens, [B, T] -> [B] (no gradient): the KL
    penalty that `kl_penalty=reward` subtracts (times beta) from each completion's reward, as verl sums its
    token-level penalised rewards into the outcome reward."""
    with torch.no_grad():
        kl = kl_estimate(logp.detach(), ref_logp, estimator, clamp)
        return torch.where(mask > 0, kl, torch.zeros_like(kl)).sum(-1)
