"""Per-token KL(policy || reference) estimators (Schulman, "Approximating KL divergence", 2020).

With `d = ref_logp - logp` (log of ref/policy for the sampled token):
k1 = -d = logp - ref_logp (unbiased, high variance, can be negative);
k2 = 0.5 * d**2 (biased, low variance, gradient = gradient of the true KL for small d);
k3 = exp(d) - d - 1 (unbiased, always >= 0; the GRPO paper's choice).

>>> import torch
>>> kl_estimate(torch.tensor([[0.0]]), torch.tensor([[-1.0]]), "k1")
tensor([[1.]])
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mmrl.errors import UserError

# exp() of a log-ratio above this overflows float16/bfloat16 ranges; clamping it keeps gradients finite
# (a clamp *after* an overflowed exp gives 0 * inf = NaN in backward). Values this far out are never "exact" anyway.
MAX_LOG_RATIO = 20.0


def _k1(d: torch.Tensor) -> torch.Tensor:
    return -d


def _k2(d: torch.Tensor) -> torch.Tensor:
    return 0.5 * d.square()


def _k3(d: torch.Tensor) -> torch.Tensor:
    d = d.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    return torch.exp(d) - d - 1.0


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"k1": _k1, "k2": _k2, "k3": _k3}


def kl_estimate(
    logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k3", clamp: float | None = None
) -> torch.Tensor:
    """Per-token KL estimate, shape of `logp` ([B, T]); clamped to [-clamp, clamp] when `clamp` is set.

    `ref_logp` carries no gradient (it comes from the frozen reference); gradients flow through `logp`.
    """
    if estimator not in KL_ESTIMATORS:
        raise UserError(f"algorithm.kl_estimator: unknown '{estimator}'; valid: {', '.join(KL_ESTIMATORS)}")
    kl = KL_ESTIMATORS[estimator](ref_logp.detach() - logp)
    if clamp is not None:
        kl = kl.clamp(-clamp, clamp)
    return kl
