"""Entropy controls: the bonus (its value and gradient by hand, and against TRL 1.16's own bonus), the adaptive
coefficient (Skywork-OR1's rule by hand; the paper's gating and TRL's lagged one), the top-entropy token mask
(against TRL's get_high_entropy_mask and its loss), and the config checks."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from mmrl.errors import UserError
from mmrl.models.logprobs import token_entropy
from mmrl.preflight import load_config
from mmrl.rl.entropy import (
    ENTROPY_CONTROLS,
    AdaptiveEntropy,
    FixedEntropy,
    entropy_bonus,
    entropy_control,
    plan_entropy,
    quantile_threshold,
    top_entropy_mask,
)
from mmrl.rl.losses import POLICY_LOSSES, aggregate

sys.path.insert(0, str(Path(__file__).parent))
from trl_referee import _OneProcess, trl_loss  # noqa: E402

LOGP = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.2, -9.0]])
OLD = LOGP - torch.tensor([[0.5, -0.5, 0.0], [1.5, -0.5, 0.0]])
ADV = torch.tensor([1.0, -2.0])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
ENTROPY = torch.tensor([[0.5, 2.0, 0.1], [1.5, 0.9, 7.0]])  # the padded 7.0 must never count


def test_token_entropy_by_hand():
    uniform, peaked = torch.zeros(4), torch.tensor([math.log(3.0), 0.0])  # probabilities 3/4, 1/4
    assert token_entropy(uniform).item() == pytest.approx(math.log(4))
    assert token_entropy(peaked).item() == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))


def test_bonus_by_hand_and_split_over_micro_batches():
    h = ENTROPY.clone().requires_grad_(True)
    bonus = entropy_bonus(h, MASK, coef=0.1, global_tokens=5.0)
    assert bonus.item() == pytest.approx(-0.1 * (0.5 + 2.0 + 0.1 + 1.5 + 0.9) / 5)
    bonus.backward()
    assert torch.allclose(h.grad, -0.1 / 5 * MASK.float())  # d/dH_t = -c / N on trained tokens, 0 on padding
    rows = [entropy_bonus(ENTROPY[r], MASK[r], 0.1, 5.0) for r in (slice(0, 1), slice(1, 2))]
    assert sum(float(r) for r in rows) == pytest.approx(bonus.item())  # global normaliser: the pieces add up


def test_bonus_matches_trl():
    h = ENTROPY.clone().requires_grad_(True)
    logp = LOGP.clone().requires_grad_(True)
    out = POLICY_LOSSES.get("ppo")(logp, OLD, ADV, MASK, eps_low=0.2, eps_high=0.2)
    ours = aggregate("grpo", out.per_token, MASK, max_completion_length=3) + entropy_bonus(h, MASK, 0.05, 5.0)
    ours.backward()
    h_ref, logp_ref = ENTROPY.clone().requires_grad_(True), LOGP.clone().requires_grad_(True)
    theirs = trl_loss("grpo", logp_ref, OLD, ADV, MASK, entropies=h_ref, entropy_coef=0.05)
    theirs.backward()
    assert abs(ours.item() - theirs.item()) < 1e-6
    assert torch.allclose(h.grad, h_ref.grad, atol=1e-7) and torch.allclose(logp.grad, logp_ref.grad, atol=1e-6)


def test_adaptive_coefficient_by_hand():
    control = AdaptiveEntropy(coef=0.0, target=0.2, delta=0.005, coef_min=0.0, coef_max=0.012)
    applied = []
    for entropy in (0.1, 0.1, 0.1, 0.3, 0.1):
        applied.append(control.coefficient(entropy))
        control.observe(entropy)
    # c: 0 -> .005 -> .010 -> .012 (max) -> .007 (entropy above target) -> .012; applied only while e_k <= target
    assert applied == pytest.approx([0.0, 0.005, 0.010, 0.0, 0.007])
    assert control.coef == pytest.approx(0.012)
    saved = control.state_dict()
    fresh = entropy_control(load_config(None, ["algorithm.entropy_control=adaptive"]).algorithm)
    fresh.load_state_dict(saved)
    assert fresh.coef == pytest.approx(0.012) and isinstance(fresh, AdaptiveEntropy)


def test_a_resume_restores_the_adapted_coefficient_only():
    """The adapted c_k comes back exactly; a fixed coefficient is the config's, so a resume that changed it (or
    switched the control, both allowed through trainer.resume_allow_changes) gets the new one, not the checkpoint's."""
    adapted = AdaptiveEntropy(coef=0.1 + 0.2, target=0.2, delta=0.005)  # a value float round-off would show
    fresh = AdaptiveEntropy(coef=0.0)
    fresh.load_state_dict(adapted.state_dict())
    assert fresh.coef == 0.1 + 0.2
    changed = FixedEntropy(coef=0.02)
    changed.load_state_dict(FixedEntropy(coef=0.05).state_dict())
    assert changed.coef == 0.02
    to_fixed, to_adaptive = FixedEntropy(coef=0.02), AdaptiveEntropy(coef=0.001)
    to_fixed.load_state_dict(adapted.state_dict())
    to_adaptive.load_state_dict(FixedEntropy(coef=0.05).state_dict())
    assert (to_fixed.coef, to_adaptive.coef) == (0.02, 0.001)


def test_paper_gating_and_trls_lagged_gating():
    """Skywork-OR1 gates step k on its own entropy e_k; TRL on the previous step's. A step whose entropy crosses the
    target shows the difference: mmrl applies no bonus at e_k = 0.3 > 0.2, TRL's lag would still apply c_k."""
    control = AdaptiveEntropy(coef=0.01, target=0.2, delta=0.0)
    entropies = [0.1, 0.3]
    paper = [control.coefficient(e) for e in entropies]
    lagged = [control.coef if previous <= control.target else 0.0 for previous in [0.1, *entropies[:-1]]]
    assert paper == [0.01, 0.0] and lagged == [0.01, 0.01]


def test_top_entropy_mask_matches_trl():
    from types import SimpleNamespace

    from trl.trainer.grpo_trainer import GRPOTrainer

    g = torch.Generator().manual_seed(0)
    entropy = torch.rand(4, 7, generator=g) * 3
    mask = (torch.rand(4, 7, generator=g) > 0.3).long()
    fake = SimpleNamespace(accelerator=_OneProcess())
    for quantile in (0.2, 0.5, 0.8):
        threshold = quantile_threshold(entropy[mask.bool()].tolist(), quantile)
        ours = top_entropy_mask(entropy, mask, threshold)
        theirs = GRPOTrainer.get_high_entropy_mask(fake, entropy, mask, 1 - quantile)
        assert torch.equal(ours.bool(), theirs)
        assert ours.sum() == pytest.approx(quantile * mask.sum(), abs=1.0)
    # by hand: active entropies .5 2 .1 1.5 .9; the 0.8 quantile (top 20%) is 1.6 by linear interpolation: keep 2.0
    assert quantile_threshold([0.5, 2.0, 0.1, 1.5, 0.9], 0.2) == pytest.approx(1.6)
    assert top_entropy_mask(ENTROPY, MASK, 1.6).tolist() == [[0, 1, 0], [0, 0, 0]]


def test_top_entropy_loss_matches_trl():
    threshold = quantile_threshold(ENTROPY[MASK.bool()].tolist(), 0.4)
    logp = LOGP.clone().requires_grad_(True)
    out = POLICY_LOSSES.get("ppo")(logp, OLD, ADV, MASK, eps_low=0.2, eps_high=0.2,
                                   entropy_mask=top_entropy_mask(ENTROPY, MASK, threshold))
    ours = aggregate("grpo", out.per_token, MASK, max_completion_length=3)
    ours.backward()
    logp_ref = LOGP.clone().requires_grad_(True)
    theirs = trl_loss("grpo", logp_ref, OLD, ADV, MASK, entropies=ENTROPY, top_entropy_quantile=0.4)
    theirs.backward()
    assert abs(ours.item() - theirs.item()) < 1e-6 and torch.allclose(logp.grad, logp_ref.grad, atol=1e-6)


def test_plan_entropy_one_process():
    key = 0
    step = plan_entropy({key: ENTROPY}, {key: MASK}, FixedEntropy(coef=0.1), quantile=0.2, world=1)
    assert step.coef == 0.1
    assert step.metrics["entropy/rollout_mean"] == pytest.approx(5.0 / 5)
    assert step.mask_of(key).tolist() == [[0, 1, 0], [0, 0, 0]]
    assert step.metrics["entropy/trained_frac"] == pytest.approx(1 / 5)


def test_config():
    assert ENTROPY_CONTROLS.names() == ["adaptive", "fixed"]
    cfg = load_config(None, ["algorithm.entropy_coef=0.01", "algorithm.top_entropy_quantile=0.2"]).algorithm
    assert (cfg.entropy_control, cfg.entropy_coef, cfg.top_entropy_quantile) == ("fixed", 0.01, 0.2)
    for overrides, message in [(["algorithm.entropy_control=skywork"], "unknown entropy control 'skywork'"),
                               (["algorithm.top_entropy_quantile=0"], "top_entropy_quantile"),
                               (["algorithm.entropy_coef_min=2"], "entropy_coef_min .* must not exceed"),
                               # the adaptive control's settings under the fixed one would change nothing
                               (["algorithm.entropy_target=0.5"], "entropy_target: only entropy_control=adaptive"),
                               (["algorithm.entropy_coef_max=0.5"], "entropy_coef_max: only entropy_control=adaptive"),
                               # an adaptive start outside its range would apply a coefficient above its cap once
                               (["algorithm.entropy_control=adaptive", "algorithm.entropy_coef=2"],
                                "starts at 2.0, outside"),
                               (["algorithm.entropy_control=adaptive", "algorithm.entropy_coef=0.001",
                                 "algorithm.entropy_coef_min=0.01"], "starts at 0.001, outside")]:
        with pytest.raises(UserError, match=message):
            load_config(None, overrides)


def test_the_threshold_is_torch_quantiles_without_its_size_limit():
    """Bit-equal to torch.quantile (TRL's threshold) where that runs, ties included; and past its 2**24 values, which
    a large step's tokens over all processes exceed, where torch.quantile refuses."""
    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 5, 33, 1001):
        values = torch.rand(n, generator=g) * 5
        values[: n // 3] = values[0]
        for q in (1e-6, 0.2, 0.5, 0.999, 1.0):
            assert quantile_threshold(values, q) == float(torch.quantile(values, 1 - q))
    many = torch.arange(2**24 + 1, dtype=torch.float32).flip(0)
    with pytest.raises(RuntimeError, match="too large"):
        torch.quantile(many, 0.5)
    assert quantile_threshold(many, 0.5) == 2**23
