"""Advantage estimators against hand-computed values (arithmetic written next to each expectation)."""

import math

import pytest
import torch

from mmrl.errors import UserError
from mmrl.registry import Registry
from mmrl.rl.advantages import ADVANTAGES, compute_advantages

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


def test_registry_errors():
    with pytest.raises(UserError, match="algorithm.advantage: unknown .* 'ppo'.*dr_grpo, gdpo, grpo, reinforce_pp, rloo"):
        ADVANTAGES.get("ppo")
    reg = Registry("thing")
    reg.register("a")(len)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(len)
    assert reg.names() == ["a"] and "a" in reg


def test_rloo_is_not_divided_by_the_std_unless_asked():
    from mmrl.config import load_config

    algo = load_config(None, ["algorithm.advantage=rloo"]).algorithm
    adv = compute_advantages(algo.advantage, REWARDS, GROUPS, scale=algo.scale_rewards, eps=algo.std_eps)
    close(adv, [2 / 3, -2 / 3, -2 / 3, 2 / 3, -2.0, 0.0, 2.0, 0.0])  # plain leave-one-out
    algo = load_config(None, ["algorithm.advantage=rloo", "algorithm.scale_rewards=true"]).algorithm
    scaled = compute_advantages(algo.advantage, REWARDS, GROUPS, scale=algo.scale_rewards, eps=0.0)
    close(scaled[:2], [(2 / 3) / 0.577350, -(2 / 3) / 0.577350])
    # grpo keeps its own convention (scaled) under the same default.
    algo = load_config(None, []).algorithm
    grpo = compute_advantages(algo.advantage, REWARDS, GROUPS, scale=algo.scale_rewards, eps=0.0)
    close(grpo[:2], [0.5 / 0.577350, -0.5 / 0.577350])


def test_reinforce_pp_whitens_token_level():
    # rewards [1, 0 | 1, 1], tokens [3, 1 | 2, 2]: centred a = [.5, -.5, 0, 0];
    # token-weighted mean = (3 * .5 - .5) / 8 = .125; var = (3 * .25 + .25 - 8 * .125**2) / 7 = .125
    rewards, groups, tokens = torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([0, 0, 1, 1]), torch.tensor([3, 1, 2, 2])
    adv = compute_advantages("reinforce_pp", rewards, groups, scale=None, eps=0.0, token_counts=tokens)
    s = math.sqrt(0.125)
    close(adv, [0.375 / s, -0.625 / s, -0.125 / s, -0.125 / s])


def test_reinforce_pp_over_two_processes_equals_the_whole_batch():
    """Each 'process' holds one group; the all-reduce hook sums the moments of both, as torch.distributed would."""
    rewards, groups, tokens = torch.tensor([1.0, 0.0, 1.0, 0.3]), torch.tensor([0, 0, 1, 1]), torch.tensor([3, 1, 2, 5])
    whole = compute_advantages("reinforce_pp", rewards, groups, scale=None, eps=1e-4, token_counts=tokens)
    seen: list[torch.Tensor] = []

    def capture(moments):
        seen.append(moments.clone())
        return moments

    halves = [slice(0, 2), slice(2, 4)]
    for part in halves:  # first pass: each half's own moments
        compute_advantages("reinforce_pp", rewards[part], groups[part], scale=None, eps=1e-4,
                           token_counts=tokens[part], all_reduce=capture)
    total = seen[0] + seen[1]
    split = torch.cat([compute_advantages("reinforce_pp", rewards[p], groups[p], scale=None, eps=1e-4,
                                          token_counts=tokens[p], all_reduce=lambda _m: total) for p in halves])
    close(split, whole.tolist())
    alone = compute_advantages("reinforce_pp", rewards[:2], groups[:2], scale=None, eps=1e-4, token_counts=tokens[:2])
    assert not torch.allclose(alone, whole[:2], atol=1e-3)  # per-process whitening would differ


def test_scale_rewards_true_where_the_estimator_ignores_it_is_a_config_error():
    from mmrl.config import load_config

    for name in ("dr_grpo", "reinforce_pp"):
        with pytest.raises(UserError, match=f"algorithm.scale_rewards: {name} never divides by the group std"):
            load_config(None, [f"algorithm.advantage={name}", "algorithm.scale_rewards=true"])
        load_config(None, [f"algorithm.advantage={name}", "algorithm.scale_rewards=false"])  # says what it does
    load_config(None, ["algorithm.advantage=rloo", "algorithm.scale_rewards=true"])  # rloo honours it
