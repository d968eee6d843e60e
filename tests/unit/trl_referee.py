"""TRL 1.16's own GRPO loss code run on given tensors: `GRPOTrainer._compute_loss` with a stand-in `self` whose
forward returns the log-probs under test (no model, no accelerator: one process, no accumulation). Used as a
differential referee by the loss tests; nothing of TRL's formulas is restated here."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

# The GPU image has no trl: the loss tests that import this referee are skipped there, not a collection error that
# stops `pytest -m gpu tests/` before any GPU test runs.
pytest.importorskip("trl", reason="the TRL referee needs trl (the dev extra)")
from trl.trainer.grpo_trainer import GRPOTrainer  # noqa: E402


class _OneProcess:
    num_processes = 1
    sync_gradients = True

    @staticmethod
    def reduce(tensor: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        return tensor

    @staticmethod
    def gather(tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    @staticmethod
    def pad_across_processes(tensor: torch.Tensor, dim: int = 0, pad_index: float = 0) -> torch.Tensor:
        return tensor


def trl_loss(loss_type: str, logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
             mask: torch.Tensor, *, entropies: torch.Tensor | None = None, sampler_logp: torch.Tensor | None = None,
             **settings: float | None) -> torch.Tensor:
    """TRL's scalar loss for `loss_type` on these tensors ([B, T]; advantages [B]); `settings` are GRPOConfig fields
    (epsilon_low, epsilon_high, sapo_temperature_pos, ..., off_policy_mask_threshold, top_entropy_quantile,
    entropy_coef: a fixed bonus on `entropies`)."""
    args = SimpleNamespace(delta=None, use_bias_correction_kl=False, steps_per_generation=1, sapo_temperature_pos=1.0,
                           sapo_temperature_neg=1.05)
    for key in ("sapo_temperature_pos", "sapo_temperature_neg"):
        if key in settings:
            setattr(args, key, settings.pop(key))
    entropies = entropies if entropies is not None else torch.ones_like(logp)
    fake = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, entropies, None),
        aux_loss_enabled=False, top_entropy_quantile=settings.pop("top_entropy_quantile", 1.0),
        off_policy_mask_threshold=settings.pop("off_policy_mask_threshold", None), importance_sampling_level="token",
        beta=0.0, loss_type=loss_type, epsilon_low=settings.pop("epsilon_low", 0.2),
        epsilon_high=settings.pop("epsilon_high", 0.2), args=args, use_vllm=False,
        model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1, _entropy_bonus_enabled=False,
        _metrics=defaultdict(lambda: defaultdict(list)), accelerator=_OneProcess(),
        max_completion_length=mask.shape[1])
    coef = settings.pop("entropy_coef", 0.0)
    fake.entropy_coef, fake.use_adaptive_entropy, fake._entropy_bonus_enabled = coef, False, coef != 0.0
    fake.get_high_entropy_mask = lambda e, m, t: GRPOTrainer.get_high_entropy_mask(fake, e, m, t)
    fake.get_off_policy_mask = GRPOTrainer.get_off_policy_mask
    assert not settings, f"unused settings {settings}"
    b, t = mask.shape
    inputs = {"prompt_ids": torch.zeros(b, 1, dtype=torch.long), "prompt_mask": torch.ones(b, 1, dtype=torch.long),
              "completion_ids": torch.zeros(b, t, dtype=torch.long), "completion_mask": mask,
              "advantages": advantages, "old_per_token_logps": old_logp, "num_items_in_batch": mask.sum().float()}
    if sampler_logp is not None:
        inputs["sampling_per_token_logps"] = sampler_logp
    return GRPOTrainer._compute_loss(fake, None, inputs)
