"""The step's advantages: every group's rewards (minus beta x the rollout policy's KL to the reference when the KL
goes into the reward) through the configured advantage estimator (`mmrl.rl.advantages`), over the step's groups on
every process."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mmrl.config.rl import AlgorithmConfig, RewardSpec
from mmrl.parallel.distributed import all_reduce_sum, all_reduce_sum_tensor
from mmrl.rl.advantages import compute_advantages
from mmrl.rl.experience import Group
from mmrl.rl.kl import sequence_kl
from mmrl.rl.losses import loss_mask
from mmrl.rl.step_logprobs import GroupLogProbs
from mmrl.runs.training_run import TrainingRun


def kl_in_reward(algo: AlgorithmConfig) -> bool:
    """Whether the KL penalty goes into the reward (then the advantages need the old and reference log-probs)."""
    return algo.beta > 0 and algo.kl_penalty == "reward"


def step_advantages(
    run: TrainingRun,
    groups: list[Group],
    logprobs: Sequence[GroupLogProbs | None],
    reward_specs: Sequence[RewardSpec] = (),
) -> tuple[list[torch.Tensor], dict[str, float]]:
    """Every group's advantages [G] (in the rewards' dtype) from its rewards, minus beta * sequence KL when the KL is
    in the reward (`logprobs[i]`: group i's old and reference log-probs then; unread otherwise).

    `reward_specs` (the stage's rewards) give gdpo each reward's score and weight.
    Batch-level statistics (reinforce_pp's whitening, gdpo's, the KL metric) are summed over all processes, so every
    process takes part even with no groups. The metrics: {"loss/kl_mean": mean KL per active token} for KL-in-reward."""
    algo, world = run.cfg.algorithm, run.dist.world_size
    in_reward = kl_in_reward(algo)
    rewards, counts, kl_sum, kl_tokens = [], [], 0.0, 0.0
    for group, logp in zip(groups, logprobs):
        mask = loss_mask(group.completion_mask, group.truncated, algo.mask_truncated)
        reward = group.rewards.double()
        if in_reward:
            assert logp is not None
            kl = sequence_kl(
                logp.old, logp.ref, group.completion_mask, algo.resolved_kl_estimator, algo.kl_clamp
            ).double()
            kl = kl.to(reward.device)
            reward = reward - algo.beta * kl
            kl_sum += float(kl.sum())
            kl_tokens += float(group.completion_mask.sum())
        rewards.append(reward)
        counts.append(mask.sum(-1).double().to(reward.device))
    device = rewards[0].device if rewards else torch.device("cpu")
    sizes = torch.tensor([len(r) for r in rewards], dtype=torch.long, device=device)
    all_rewards = torch.cat(rewards) if rewards else torch.zeros(0, dtype=torch.float64, device=device)
    group_ids = torch.arange(len(rewards), device=device).repeat_interleave(sizes)

    def reduce(t: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum_tensor(t, world)

    components, weights = _reward_components(groups, reward_specs, device)
    adv = compute_advantages(
        algo.advantage,
        all_rewards,
        group_ids,
        scale=algo.scale_rewards,
        eps=algo.std_eps,
        token_counts=torch.cat(counts) if counts else None,
        all_reduce=reduce,
        components=components,
        component_weights=weights,
    )
    advantages = [adv[group_ids == i].to(group.rewards.dtype) for i, group in enumerate(groups)]
    if not in_reward:
        return advantages, {}
    tokens = all_reduce_sum(kl_tokens, world)
    return advantages, {"loss/kl_mean": all_reduce_sum(kl_sum, world) / max(tokens, 1.0)}


def _reward_components(
    groups: list[Group], specs: Sequence[RewardSpec], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each completion's score per reward [N, K] (NaN: unscorable) and the rewards' weights [K], in `specs` order."""
    columns = [
        torch.tensor(
            [
                math.nan if v is None else float(v)
                for group in groups
                for v in group.components.get(spec.name, [None] * len(group.texts))
            ],
            dtype=torch.float64,
            device=device,
        )
        for spec in specs
    ]
    n = sum(len(group.texts) for group in groups)
    matrix = torch.stack(columns, 1) if columns else torch.zeros(n, 0, dtype=torch.float64, device=device)
    return matrix, torch.tensor([spec.weight for spec in specs], dtype=torch.float64, device=device)
