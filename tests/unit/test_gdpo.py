"""GDPO (`algorithm.advantage=gdpo`): each reward normalised within its group, summed with the rewards' weights, the
sum normalised over the batch — hand-computed from the paper's and TRL's normalize_then_sum formula (TRL's sits
inline in its generation step, so the formula is checked with numbers worked by hand), and exact when the batch is
split over processes."""

from __future__ import annotations

import math

import pytest
import torch

from mmrl.errors import UserError
from mmrl.preflight import load_config
from mmrl.rl.advantages import compute_advantages

NAN = math.nan
GROUPS = torch.tensor([0, 0, 0, 1, 1, 1])
# two rewards: accuracy (weight 1) and format (weight 0.5); the totals would be 1.5, 1, 0.5 | 1.5, 1.5, 0.5
ACC = [1.0, 1.0, 0.0, 1.0, 1.0, 0.0]
FMT = [1.0, 0.0, 1.0, 1.0, 1.0, 1.0]
COMPONENTS = torch.tensor([ACC, FMT]).T
WEIGHTS = torch.tensor([1.0, 0.5])
TOTAL = COMPONENTS @ WEIGHTS


def gdpo(rewards=TOTAL, components=COMPONENTS, eps=0.0, **kw):
    return compute_advantages("gdpo", rewards, GROUPS, scale=True, eps=eps, components=components,
                              component_weights=WEIGHTS, **kw)


def test_normalise_each_reward_then_sum_then_the_batch():
    # group 0, accuracy [1, 1, 0]: mean 2/3, unbiased std 1/sqrt(3) -> [1, 1, -2] / sqrt(3);
    #          format  [1, 0, 1]: likewise [1, -2, 1] / sqrt(3)
    # group 1, accuracy as group 0; format [1, 1, 1]: std 0 -> 0
    k = 1 / math.sqrt(3)
    summed = [k * (1 + 0.5), k * (1 - 1.0), k * (-2 + 0.5), k, k, -2 * k]
    mean = sum(summed) / 6
    sd = math.sqrt(sum((s - mean) ** 2 for s in summed) / 5)
    expected = [(s - mean) / sd for s in summed]
    assert torch.allclose(gdpo(), torch.tensor(expected), atol=1e-6)
    # plain grpo on the totals ranks group 1's completions 1 and 2 the same as group 0's 1: gdpo keeps them apart
    assert gdpo()[1] != gdpo()[4]


def test_an_unscorable_completion_gets_zero_and_stays_out_of_every_statistic():
    components = COMPONENTS.clone()
    components[1, 1] = NAN  # format could not score completion 1, so its total is None (mmrl's composite)
    rewards = TOTAL.clone()
    rewards[1] = NAN
    adv = gdpo(rewards, components)
    assert adv[1] == 0 and not torch.isnan(adv).any()
    # group 0 without completion 1: accuracy [1, 0] -> mean .5, std sqrt(.5) -> [+-1/sqrt(2)]; format [1, 1] -> 0
    # group 1 as before: [k, k, -2k]
    k, h = 1 / math.sqrt(3), 1 / math.sqrt(2)
    summed = [h, -h, k, k, -2 * k]
    mean = sum(summed) / 5
    sd = math.sqrt(sum((s - mean) ** 2 for s in summed) / 4)
    assert torch.allclose(adv[[0, 2, 3, 4, 5]], torch.tensor([(s - mean) / sd for s in summed]), atol=1e-6)


def test_exact_when_the_groups_are_split_over_two_processes():
    """Each process holds whole groups; the batch statistics are summed through `all_reduce` (as the update does)."""
    whole = gdpo(eps=1e-4)
    parts = [slice(0, 3), slice(3, 6)]

    def moments_of(part):
        captured = []
        compute_advantages("gdpo", TOTAL[part], GROUPS[part], scale=True, eps=1e-4, components=COMPONENTS[part],
                           component_weights=WEIGHTS, all_reduce=lambda t: captured.append(t) or t)
        return captured[0]

    total = moments_of(parts[0]) + moments_of(parts[1])
    split = torch.cat([compute_advantages("gdpo", TOTAL[p], GROUPS[p], scale=True, eps=1e-4,
                                          components=COMPONENTS[p], component_weights=WEIGHTS,
                                          all_reduce=lambda t: total) for p in parts])
    assert torch.allclose(split, whole, atol=1e-7)
    alone = compute_advantages("gdpo", TOTAL[:3], GROUPS[:3], scale=True, eps=1e-4, components=COMPONENTS[:3],
                               component_weights=WEIGHTS)
    assert not torch.allclose(alone, whole[:3], atol=1e-3)  # without the all-reduce it would differ


def test_config():
    assert load_config(None, ["algorithm.advantage=gdpo"]).algorithm.advantage == "gdpo"
    with pytest.raises(UserError, match="advantage gdpo normalises each reward apart"):
        load_config(None, ["algorithm.advantage=gdpo", "algorithm.beta=0.1", "algorithm.kl_penalty=reward"])


def test_components_that_did_not_make_the_total_are_refused():
    """A rollout that reports only totals (no score per reward) would leave every component NaN: normalised, each
    would give 0, and gdpo would train on nothing, silently. The total counts every non-zero-weight reward, so a
    missing score beside a known total is refused; a zero-weight reward's may be missing."""
    missing = COMPONENTS.clone()
    missing[:, 1] = NAN
    with pytest.raises(UserError, match="reward 2 of `rewards:` has no score"):
        gdpo(components=missing)
    weights = torch.tensor([1.0, 0.0])
    adv = compute_advantages("gdpo", COMPONENTS[:, 0], GROUPS, scale=True, eps=0.0, components=missing,
                             component_weights=weights)
    assert adv.abs().sum() > 0
