"""`PolicyLoss`: the algorithm's loss settings as one frozen object built from the config, so the update passes
tensors only; it calls the registered loss and aggregation with exactly the config's values."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mmrl.config.rl import AlgorithmConfig
from mmrl.rl.losses import POLICY_LOSSES, PolicyLoss, aggregate

LOGP = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.2, -9.0]])
OLD = LOGP - torch.tensor([[0.5, -0.5, 0.0], [1.5, -0.5, 0.0]])
REF = LOGP + 0.3
ADV = torch.tensor([1.0, -2.0])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])


@pytest.mark.parametrize("name", ["ppo", "gspo"])
def test_from_config_calls_the_registered_loss_with_the_config_values(name):
    algo = AlgorithmConfig(policy_loss=name, loss_aggregation="dapo", eps_low=0.1, eps_high=0.28, dual_clip_c=3.0,
                           ratio_clamp=1.2, beta=0.05, kl_penalty="loss", kl_estimator="k2", kl_clamp=4.0)
    settings = PolicyLoss.from_config(algo)
    weight = torch.tensor([[1.0, 0.5, 2.0], [1.0, 1.0, 1.0]])
    loss, metrics = settings.per_token(LOGP, OLD, ADV, MASK, ref_logp=REF, is_weight=weight)
    expected, expected_metrics = POLICY_LOSSES.get(name)(
        LOGP, OLD, ADV, MASK, eps_low=0.1, eps_high=0.28, dual_clip_c=3.0, ratio_clamp=1.2, ref_logp=REF, beta=0.05,
        kl_estimator="k2", kl_clamp=4.0, is_weight=weight)
    assert torch.equal(loss, expected) and metrics == expected_metrics and "kl_mean" in metrics
    norms = dict(max_completion_length=3, global_active_tokens=7.0, global_num_sequences=3, global_micro_batches=2)
    assert torch.equal(settings.aggregate(loss, MASK, **norms), aggregate("dapo", expected, MASK, **norms))
    # the settings matter: the defaults give another loss on this batch
    assert not torch.equal(PolicyLoss(name=name).per_token(LOGP, OLD, ADV, MASK)[0], expected)


def test_kl_in_the_reward_is_no_kl_in_the_loss():
    in_reward = PolicyLoss.from_config(AlgorithmConfig(beta=0.1, kl_penalty="reward"))
    in_loss = PolicyLoss.from_config(AlgorithmConfig(beta=0.1, kl_penalty="loss"))
    assert (in_reward.beta, in_loss.beta) == (0.0, 0.1)
    assert "kl_mean" not in in_reward.per_token(LOGP, OLD, ADV, MASK, ref_logp=REF)[1]
    assert in_loss.kl_estimator == AlgorithmConfig(beta=0.1).resolved_kl_estimator


def test_the_settings_cannot_change_during_an_update():
    settings = PolicyLoss.from_config(AlgorithmConfig())
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.eps_high = 0.5  # type: ignore[misc]
