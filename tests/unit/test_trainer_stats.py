"""The trainer's per-step group statistics mean what their names say, whatever the advantage estimator."""

from __future__ import annotations

import math

import torch

from mmrl.rl.advantages import compute_advantages
from mmrl.rl.experience import Group
from mmrl.rl.group_stats import local_stats as _local_stats


def _group(rewards: list[float], lengths: list[int]) -> Group:
    width = max(lengths)
    mask = (torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).long()
    return Group(sample=None, prompt={}, completion_ids=torch.ones_like(mask), completion_mask=mask,
                 truncated=torch.zeros(len(rewards), dtype=torch.bool), texts=[""] * len(rewards),
                 rewards=torch.tensor(rewards), components={})


def test_frac_zero_std_groups_counts_groups_of_equal_rewards_under_reinforce_pp():
    """reinforce_pp whitens token-level over the batch, so a group of equal rewards gets non-zero advantages (its
    centred 0 minus the batch mean): it still is a zero-std group, and a group with spread is not."""
    groups = [_group([1.0, 1.0, 1.0], [1, 2, 5]), _group([1.0, 0.0, math.nan], [4, 1, 3]),
              _group([0.0, math.nan, 0.0], [1, 1, 1])]
    rewards = torch.cat([g.rewards for g in groups])
    ids = torch.arange(3).repeat_interleave(3)
    tokens = torch.cat([g.completion_mask.sum(-1) for g in groups])
    adv = compute_advantages("reinforce_pp", rewards, ids, scale=None, eps=1e-4, token_counts=tokens)
    assert adv[ids == 0].abs().min() > 0  # the premise: equal rewards, non-zero advantages
    assert _local_stats(groups)["zero_std"] == [1.0, 0.0, 1.0]
