"""`trainer.max_tokens_per_micro_batch` against every loss setting a user can combine with it (breaker's review): the
budget only splits the gradient accumulation, so one step lands on the same weights as one forward per group."""

from __future__ import annotations

import copy
import dataclasses
import sys
from pathlib import Path

import pytest
import torch

from mmrl.models.logprobs import completion_logprobs
from mmrl.models.training_forward import capture_image_features, match_image_features
from mmrl.rl.training_batch import training_batch
from mmrl.rl.update import policy_update

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
sys.path.insert(0, str(ROOT / "tests" / "fixtures" / "trainer"))

from fixed_groups import fixed_group  # noqa: E402
from test_micro_batch_budget import LENGTH, G, make_trainer, max_diff, weights  # noqa: E402


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory) -> Path:
    from data_pipelines.synthetic import build_synthetic

    return build_synthetic(["color"], 6, 0, tmp_path_factory.mktemp("synthetic"), image_size=56)


CASES = {
    # sequence-level ratio (a row's ratio is its own token mean: cutting the group by rows must keep it), two passes
    # over two mini-batches (old log-probs in pieces)
    "gspo_mu2_mini2": ["algorithm.policy_loss=gspo", "algorithm.loss_aggregation=grpo", "algorithm.num_iterations=2",
                       "algorithm.mini_batches=2"],
    # masked truncated rows (pieces with no active loss token), the KL in the reward, TIS weights on the sampler's
    # log-probs
    "mask_truncated_bnpo_kl_reward_tis": ["algorithm.mask_truncated=true", "algorithm.loss_aggregation=bnpo",
                                          "algorithm.beta=0.1", "algorithm.kl_penalty=reward", "algorithm.tis_cap=2.0"],
    # the rollout's image features reused by every piece of a group (KL in the loss: reference forwards too)
    "frozen_tower_kl_mu2": ["model.freeze_vision_tower=true", "algorithm.beta=0.05", "algorithm.num_iterations=2"],
    "lora_kl": ["model.lora.enabled=true", "model.lora.r=4", "algorithm.beta=0.05"],
    # the newer losses and corrections (issue 31): CISPO with IcePop's two-sided mask and DeepSeek-V3.2's off-policy
    # sequence mask over two passes; SAPO with an entropy bonus on the top-20% entropy tokens and token-level MIS;
    # GMPO with GDPO advantages, the adaptive entropy bonus and two mini-batches. (The fixed groups' sampler log-probs
    # are extreme: the tokens the masks keep weigh ~1e-3, hence the larger SGD steps.)
    "cispo_icepop_opsm_mu2": ["algorithm.policy_loss=cispo", "algorithm.loss_aggregation=dapo", "algorithm.eps_low=1",
                              "algorithm.eps_high=4", "algorithm.is_correction=icepop", "algorithm.tis_cap=1e6",
                              "algorithm.off_policy_mask_threshold=0.5", "algorithm.num_iterations=2",
                              "optimizer.lr=50"],
    "sapo_entropy_top20_token_mask": ["algorithm.policy_loss=sapo", "algorithm.entropy_coef=0.01",
                                    "algorithm.top_entropy_quantile=0.2", "algorithm.is_correction=token_mask",
                                    "algorithm.tis_cap=1e6", "algorithm.tis_floor=1e-6", "optimizer.lr=50"],
    "gmpo_gdpo_adaptive_mini2": ["algorithm.policy_loss=gmpo", "algorithm.advantage=gdpo",
                                 "algorithm.entropy_control=adaptive", "algorithm.entropy_coef=0.02",
                                 "algorithm.entropy_target=100", "algorithm.mini_batches=2",
                                 "algorithm.is_correction=sequence_truncate"],
}


def with_components(trainer, group):
    """The group's reward split into the stage's rewards (the first takes the reward, the others a fixed share), as
    the rollout's composite reports them: what gdpo reads."""
    names = [spec.name for spec in trainer.schedule.stage_at(0).rewards]
    return dataclasses.replace(group, components={
        name: [float(r) if i == 0 else float(j % 2) for j, r in enumerate(group.rewards)]
        for i, name in enumerate(names)})


def with_features(trainer, group):
    """The group with its prompt's image features recorded, as the rollout records them with a frozen tower."""
    recorded: list = []
    with torch.no_grad(), capture_image_features(trainer.run.model, recorded):
        completion_logprobs(trainer.run.model, group.prompt, group.completion_ids[:1], group.completion_mask[:1])
    group = dataclasses.replace(group, image_features=match_image_features(group.prompt, recorded))
    assert group.image_features is not None
    return group


@pytest.mark.parametrize("case", list(CASES))
def test_every_loss_setting_is_exact_under_a_token_budget(synthetic_data, tmp_path, case):
    extra = CASES[case]
    runs = {}
    for name in ("default", "three_rows", "one"):
        trainer = make_trainer(synthetic_data, tmp_path / name, *extra)
        groups = [fixed_group(trainer, 0, i, group_size=G, length=LENGTH, sampler_logp=True) for i in range(2)]
        if "model.freeze_vision_tower=true" in extra:
            groups = [with_features(trainer, g) for g in groups]
        if "algorithm.advantage=gdpo" in extra:
            groups = [with_components(trainer, g) for g in groups]
        prompt_tokens = max(int(g.prompt["input_ids"].shape[-1]) for g in groups)
        # up to three full-length completions per forward; then a budget of 1 (every completion alone)
        trainer.run.cfg.trainer.max_tokens_per_micro_batch = {"default": None, "three_rows": prompt_tokens + 3 * LENGTH,
                                                              "one": 1}[name]
        initial = weights(trainer.run.model)
        stage = trainer.schedule.stage_at(0)
        metrics = policy_update(trainer.run, training_batch(trainer.run, copy.deepcopy(groups), stage,
                                                            trainer.reference), stage)
        trainer.run.close()
        runs[name] = (metrics, weights(trainer.run.model), initial)
    default, moved, initial = runs["default"]
    assert max_diff(initial, moved) > 1e-4, "the step did not move the weights"
    for name in ("three_rows", "one"):
        metrics, after, _ = runs[name]
        assert metrics["update/micro_batches"] > default["update/micro_batches"]
        assert metrics["loss"] == pytest.approx(default["loss"], rel=1e-5, abs=1e-7), name
        # the logged means too (token-weighted over the pieces: a one-token piece, or one of masked-out truncated
        # rows, must not weigh as much as a whole group; the on-policy ratio_mean stays exactly 1)
        for key in [k for k in default if k.startswith(("loss/", "rollout/", "entropy/"))]:
            assert metrics[key] == pytest.approx(default[key], rel=1e-4, abs=1e-6), (name, key)
        if "model.freeze_vision_tower=true" in extra:  # every piece's forward reused the rollout's features
            assert metrics["update/vision_encoder_calls"] == 0 and metrics["update/vision_reused"] > 0, name
        diff = max_diff(moved, after)
        print(f"{case} {name}: {diff:.3g}")
        assert diff <= 1e-6, (case, name, diff)
