"""CISPO, SAPO, GMPO and DeepSeek-V3.2's off-policy sequence mask: hand-computed values and gradients from the papers'
formulas, and TRL 1.16's own `cispo` / `sapo` / off-policy-mask code on identical tensors (tests/unit/trl_referee.py).
Largest difference to TRL on these cases: float32 round-off (asserted below 1e-6)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from mmrl.errors import UserError
from mmrl.preflight import load_config
from mmrl.rl.losses import POLICY_LOSSES, LossInputs, aggregate, off_policy_sequence_mask

sys.path.insert(0, str(Path(__file__).parent))
from trl_referee import trl_loss  # noqa: E402

# Two completions, T = 3: log ratios row 0 [.5, -.5, 0] (A = +1), row 1 [1.5, -.5, pad] (A = -2).
LOGP = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.2, -9.0]])
OLD = LOGP - torch.tensor([[0.5, -0.5, 0.0], [1.5, -0.5, 0.0]])
ADV = torch.tensor([1.0, -2.0])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
E = math.exp


def sig(x: float) -> float:
    return 1 / (1 + E(-x))


def close(actual: torch.Tensor, expected, tol: float = 1e-5) -> None:
    assert torch.allclose(actual, torch.tensor(expected, dtype=actual.dtype), atol=tol), (actual, expected)


def grad_of(name: str, aggregation: str, **settings):
    logp = LOGP.clone().requires_grad_(True)
    out = POLICY_LOSSES.get(name)(logp, OLD, ADV, MASK, **settings)
    loss = aggregate(aggregation, out.per_token, MASK, max_completion_length=3)
    loss.backward()
    return out, loss, logp.grad


# -- CISPO -----------------------------------------------------------------------------------------------------------


def test_cispo_by_hand():
    out, _, _ = grad_of("cispo", "dapo", eps_low=1.0, eps_high=0.5)
    # weights clip(r, 0, 1.5): row 0 [1.5 (e^.5 = 1.6487 capped), e^-.5, 1]; row 1 [1.5 (e^1.5 capped), e^-.5]
    w = [[1.5, E(-0.5), 1.0], [1.5, E(-0.5), 0.0]]
    close(out.per_token, [[-w[0][0] * -1.0, -w[0][1] * -2.0, -1.0 * -0.5], [2 * w[1][0] * -0.3, 2 * w[1][1] * -1.2, 0]])
    assert out.metrics["clip_frac_high"] == pytest.approx(1 / 5) and out.metrics["clip_frac_low"] == 0.0
    # every token keeps a gradient, the clipped ones too: d loss_t / d logp_t = -w_t * A
    logp = LOGP.clone().requires_grad_(True)
    POLICY_LOSSES.get("cispo")(logp, OLD, ADV, MASK, eps_low=1.0, eps_high=0.5).per_token.sum().backward()
    close(logp.grad, [[-1.5, -E(-0.5), -1.0], [3.0, 2 * E(-0.5), 0.0]])


@pytest.mark.parametrize("eps_max", [1.5, 5.0])
def test_cispo_matches_trl(eps_max):
    """TRL caps the weight at epsilon_high itself (ScaleRL's eps_max); the paper at 1 + eps_high: the same loss with
    eps_high = eps_max - 1 (both readings, one number)."""
    _, loss, grad = grad_of("cispo", "dapo", eps_low=1.0, eps_high=eps_max - 1)
    logp = LOGP.clone().requires_grad_(True)
    reference = trl_loss("cispo", logp, OLD, ADV, MASK, epsilon_high=eps_max)
    reference.backward()
    assert abs(loss.item() - reference.item()) < 1e-6
    assert torch.allclose(grad, logp.grad, atol=1e-6)


# -- SAPO ------------------------------------------------------------------------------------------------------------


def test_sapo_by_hand_and_its_gradient():
    out, _, _ = grad_of("sapo", "grpo")
    # row 0 (A = 1, tau 1): -4 sig(r - 1); row 1 (A = -2, tau 1.05): +2 * 4 / 1.05 * sig(1.05 (r - 1))
    r0, r1 = [E(0.5), E(-0.5), 1.0], [E(1.5), E(-0.5)]
    close(out.per_token, [[-4 * sig(r - 1) for r in r0], [8 / 1.05 * sig(1.05 * (r - 1)) for r in r1] + [0.0]])
    # on-policy (r = 1): the gradient is PPO's, -A per token
    logp = LOGP.clone().requires_grad_(True)
    POLICY_LOSSES.get("sapo")(logp, None, ADV, MASK).per_token.sum().backward()
    close(logp.grad, [[-1.0, -1.0, -1.0], [2.0, 2.0, 0.0]])
    # off-policy: d/dlogp of -(4/tau) sig(tau (r - 1)) A = -4 sig' A r, decaying as r leaves 1 (no hard cut)
    logp = LOGP.clone().requires_grad_(True)
    POLICY_LOSSES.get("sapo")(logp, OLD, ADV, MASK).per_token.sum().backward()
    def g(r, tau, a):
        s = sig(tau * (r - 1))
        return -4 * s * (1 - s) * a * r
    close(logp.grad, [[g(r, 1.0, 1.0) for r in r0], [g(r, 1.05, -2.0) for r in r1] + [0.0]])


@pytest.mark.parametrize("taus", [(1.0, 1.05), (0.5, 2.0)])
def test_sapo_matches_trl(taus):
    _, loss, grad = grad_of("sapo", "grpo", sapo_tau_pos=taus[0], sapo_tau_neg=taus[1])
    logp = LOGP.clone().requires_grad_(True)
    reference = trl_loss("sapo", logp, OLD, ADV, MASK, sapo_temperature_pos=taus[0], sapo_temperature_neg=taus[1])
    reference.backward()
    assert abs(loss.item() - reference.item()) < 1e-6
    assert torch.allclose(grad, logp.grad, atol=1e-6)


# -- GMPO ------------------------------------------------------------------------------------------------------------


def test_gmpo_by_hand():
    out, loss, grad = grad_of("gmpo", "grpo")
    # row 0, A > 0: min(lr, clip(lr, -.4, .4)) = [.4, -.5, 0] -> mean -.1/3; row 1, A < 0: max -> [1.5, -.4] -> .55
    s0, s1 = E(-0.1 / 3), E(0.55)
    close(out.per_token, [[-s0] * 3, [2 * s1, 2 * s1, 0.0]])
    assert loss.item() == pytest.approx((-s0 + 2 * s1) / 2, rel=1e-6)
    # grpo: d/dlogp_t = -A s_i / (B |o_i|) where the raw log-ratio was kept, 0 where the clipped one was
    close(grad, [[0.0, -s0 / 6, -s0 / 6], [2 * s1 / 4, 0.0, 0.0]])
    assert out.metrics["clip_frac_high"] == pytest.approx(1 / 5)  # (0, 0): log-ratio .5 > .4 with A > 0


def test_gmpo_paper_and_reference_code_readings():
    """Asymmetric bounds and A < 0: the paper clips r to [e^-eps_low, e^eps_high]; the reference code clips
    sgn(A) log r to [-eps_low, eps_high], i.e. log r to [-eps_high, eps_low] when A < 0. mmrl follows the paper."""
    out = POLICY_LOSSES.get("gmpo")(LOGP, OLD, ADV, MASK, eps_low=0.2, eps_high=0.4).per_token
    paper = E((1.5 + -0.2) / 2)  # row 1: max(lr, clamp(lr, -.2, .4)) = [1.5, -.2]
    code = E((1.5 + -0.4) / 2)  # row 1: -min(-lr, clamp(-lr, -.2, .4)) = [1.5, -.4]
    assert out[1, 0].item() == pytest.approx(2 * paper, rel=1e-6)
    assert abs(2 * code - 2 * paper) > 0.1  # the readings really differ here
    symmetric = POLICY_LOSSES.get("gmpo")(LOGP, OLD, ADV, MASK, eps_low=0.4, eps_high=0.4).per_token
    assert symmetric[1, 0].item() == pytest.approx(2 * E(0.55), rel=1e-6)  # the paper's default: both agree


def test_gmpo_needs_one_advantage_per_completion():
    with pytest.raises(ValueError, match="one per completion"):
        POLICY_LOSSES.get("gmpo")(LOGP, OLD, ADV.unsqueeze(1).expand(2, 3), MASK)


# -- DeepSeek-V3.2 off-policy sequence mask --------------------------------------------------------------------------


def test_off_policy_mask_by_hand_and_against_trl():
    from trl.trainer.grpo_trainer import GRPOTrainer

    sampler = LOGP + torch.tensor([[0.9, 0.9, 0.9], [0.3, 0.2, 50.0]])  # mean gaps .9 and .25 (padding ignored)
    adv = torch.tensor([-1.0, -1.0])
    inputs = LossInputs(LOGP, OLD, adv, MASK, sampler_logp=sampler)
    keep = off_policy_sequence_mask(inputs, threshold=0.5)
    assert keep.tolist() == [[0.0], [1.0]]  # row 0: A < 0 and .9 > .5; row 1: .25 <= .5
    assert off_policy_sequence_mask(LossInputs(LOGP, OLD, -adv, MASK, sampler_logp=sampler), 0.5).tolist() == [[1.0],
                                                                                                              [1.0]]
    unscored = sampler.clone()
    unscored[1, 0] = math.nan  # a token the engine could not score is no evidence: row 1 stays kept, no NaN
    assert off_policy_sequence_mask(LossInputs(LOGP, OLD, adv, MASK, sampler_logp=unscored), 0.5).tolist() == [[0.0],
                                                                                                                [1.0]]
    for threshold in (0.1, 0.5, 1.0):
        ours = off_policy_sequence_mask(inputs, threshold)
        theirs = GRPOTrainer.get_off_policy_mask(adv.unsqueeze(1), LOGP, sampler, MASK, threshold)
        assert torch.equal(ours, theirs.to(ours.dtype))


def test_off_policy_mask_in_the_loss_matches_trl():
    sampler = LOGP + torch.tensor([[0.9, 0.9, 0.9], [0.3, 0.2, 50.0]])
    adv = torch.tensor([-1.0, 0.5])
    logp = LOGP.clone().requires_grad_(True)
    out = POLICY_LOSSES.get("ppo")(logp, OLD, adv, MASK, sampler_logp=sampler, off_policy_mask_threshold=0.5)
    loss = aggregate("grpo", out.per_token, MASK, max_completion_length=3)
    loss.backward()
    assert out.metrics["off_policy_masked_frac"] == pytest.approx(3 / 5)
    ref_logp = LOGP.clone().requires_grad_(True)
    reference = trl_loss("grpo", ref_logp, OLD, adv, MASK, sampler_logp=sampler, off_policy_mask_threshold=0.5)
    reference.backward()
    assert abs(loss.item() - reference.item()) < 1e-6 and torch.allclose(logp.grad, ref_logp.grad, atol=1e-6)
    assert logp.grad[0].abs().sum() == 0  # the masked sequence gets no gradient


# -- config ----------------------------------------------------------------------------------------------------------


def test_the_new_losses_load_from_the_config_and_refuse_settings_they_ignore():
    for name in ("cispo", "sapo", "gmpo"):
        assert load_config(None, [f"algorithm.policy_loss={name}"]).algorithm.policy_loss == name
    with pytest.raises(UserError, match="algorithm.dual_clip_c: policy_loss sapo"):
        load_config(None, ["algorithm.policy_loss=sapo", "algorithm.dual_clip_c=3"])
    with pytest.raises(UserError, match="algorithm.policy_loss: unknown policy loss 'cipso'"):
        load_config(None, ["algorithm.policy_loss=cipso"])
    with pytest.raises(UserError, match="sapo_tau_neg"):
        load_config(None, ["algorithm.sapo_tau_neg=0"])


@pytest.mark.parametrize(("overrides", "message"), [
    (["algorithm.policy_loss=sapo", "algorithm.eps_high=0.28"], "algorithm.eps_high: policy_loss sapo does not read"),
    (["algorithm.policy_loss=sapo", "algorithm.eps_low=0.1"], "algorithm.eps_low: policy_loss sapo does not read"),
    (["algorithm.policy_loss=gmpo", "algorithm.ratio_clamp=5"], "algorithm.ratio_clamp: policy_loss gmpo"),
    (["algorithm.policy_loss=ppo", "algorithm.sapo_tau_neg=2"], "algorithm.sapo_tau_neg: policy_loss ppo"),
    (["algorithm.policy_loss=cispo", "algorithm.sapo_tau_pos=2"], "algorithm.sapo_tau_pos: policy_loss cispo"),
])
def test_a_setting_the_chosen_loss_never_reads_is_refused(overrides, message):
    """Off its default, a setting the loss ignores would change nothing silently (sapo has no clip, gmpo clips the
    log-ratio itself, only sapo has gate temperatures)."""
    with pytest.raises(UserError, match=message):
        load_config(None, overrides)
    # the same settings where the loss reads them load
    load_config(None, ["algorithm.policy_loss=sapo", "algorithm.sapo_tau_neg=2", "algorithm.ratio_clamp=5"])
    load_config(None, ["algorithm.policy_loss=gmpo", "algorithm.eps_high=0.4", "algorithm.eps_low=0.4"])
