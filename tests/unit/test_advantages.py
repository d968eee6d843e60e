"""Advantage estimators against hand-computed values (arithmetic written next to each expectation)."""

import math

import pytest
import torch

from mmrl.errors import UserError
from mmrl.rl.advantages import ADVANTAGES, compute_advantages, group_stats
from mmrl.rl.registry import Registry

NAN = float("nan")
# group 7: [1, 0, 0, 1]; group 3: [2, NaN(unscorable), 4]; group 9: [5] (singleton). Ids deliberately not contiguous.
REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, NAN, 4.0, 5.0])
GROUPS = torch.tensor([7, 7, 7, 7, 3, 3, 3, 9])


def close(actual, expected, tol=1e-5):
    assert torch.allclose(actual, torch.tensor(expected, dtype=actual.dtype), atol=tol), (actual, expected)


def test_grpo_scaled_uses_unbiased_std():
    # group 7: mean .5, unbiased std sqrt(4 * .25 / 3) = 0.577350 -> +-.5 / .577350 = +-0.866025
    # group 3: valid [2, 4], mean 3, std sqrt(2 / 1) = 1.414214 -> -+0.707107; NaN -> 0; singleton -> 0
    adv = compute_advantages("grpo", REWARDS, GROUPS, scale=True, eps=0.0)
    close(adv, [0.866025, -0.866025, -0.866025, 0.866025, -0.707107, 0.0, 0.707107, 0.0])


def test_grpo_eps_and_unscaled():
    adv = compute_advantages("grpo", REWARDS, GROUPS, scale=True, eps=0.5)
    close(adv[:2], [0.5 / (0.577350 + 0.5), -0.5 / (0.577350 + 0.5)])
    adv = compute_advantages("grpo", REWARDS, GROUPS, scale=False, eps=1e-4)
    close(adv, [0.5, -0.5, -0.5, 0.5, -1.0, 0.0, 1.0, 0.0])


def test_dr_grpo_never_scales():
    for scale in (True, False):
        adv = compute_advantages("dr_grpo", REWARDS, GROUPS, scale=scale, eps=1e-4)
        close(adv, [0.5, -0.5, -0.5, 0.5, -1.0, 0.0, 1.0, 0.0])


def test_rloo_leave_one_out():
    # r=1 in group 7: others [0, 0, 1] mean 1/3 -> 2/3; r=0: others [1, 0, 1] mean 2/3 -> -2/3
    # group 3: 2 - 4 = -2, 4 - 2 = 2 (NaN is not an "other"); singleton: no others -> 0
    adv = compute_advantages("rloo", REWARDS, GROUPS, scale=False, eps=1e-4)
    close(adv, [2 / 3, -2 / 3, -2 / 3, 2 / 3, -2.0, 0.0, 2.0, 0.0])
    scaled = compute_advantages("rloo", REWARDS, GROUPS, scale=True, eps=0.0)
    close(scaled[:2], [(2 / 3) / 0.577350, -(2 / 3) / 0.577350])


def test_reinforce_pp_batch_whitening():
    # centred: [.5, -.5, -.5, .5, -1, (NaN), 1, 0]; over the 7 valid: mean 0, unbiased std sqrt(3 / 6) = 0.707107
    adv = compute_advantages("reinforce_pp", REWARDS, GROUPS, scale=True, eps=0.0)
    s = math.sqrt(0.5)
    close(adv, [0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s, -1 / s, 0.0, 1 / s, 0.0])
    assert abs(float(adv[torch.tensor([0, 1, 2, 3, 4, 6, 7])].std()) - 1.0) < 1e-5


def test_all_nan_group_and_dtype():
    rewards = torch.tensor([NAN, NAN, 1.0, 1.0], dtype=torch.float32)
    for name in ADVANTAGES.names():
        adv = compute_advantages(name, rewards, torch.tensor([0, 0, 1, 1]), scale=True, eps=1e-4)
        assert adv.dtype == torch.float32 and not torch.isnan(adv).any()
        close(adv, [0.0, 0.0, 0.0, 0.0])


def test_group_stats():
    stats = group_stats(REWARDS, GROUPS)
    assert stats["num_groups"] == 3
    assert stats["frac_zero_std_groups"] == pytest.approx(1 / 3)  # the singleton group
    assert stats["frac_unscorable"] == pytest.approx(1 / 8)
    assert stats["reward_mean"] == pytest.approx(13 / 7)  # (1+0+0+1+2+4+5) / 7
    assert stats["group_std_mean"] == pytest.approx((math.sqrt(1 / 3) + math.sqrt(2) + 0) / 3)
    flat = group_stats(torch.tensor([1.0, 1.0, 0.0, 1.0]), torch.tensor([0, 0, 1, 1]))
    assert flat["frac_zero_std_groups"] == 0.5


def test_registry_errors():
    with pytest.raises(UserError, match="algorithm.advantage: unknown .* 'ppo'.*dr_grpo, grpo, reinforce_pp, rloo"):
        ADVANTAGES.get("ppo")
    reg = Registry("thing")
    reg.register("a")(len)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(len)
    assert reg.names() == ["a"] and "a" in reg
