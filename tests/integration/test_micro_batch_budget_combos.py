"""`trainer.max_tokens_per_micro_batch` against every loss setting a user can combine with it (breaker's review): the
budget only splits the gradient accumulation, so one step lands on the same weights as one forward per group."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

from mmrl.models.logprobs import completion_logprobs
from mmrl.models.training_forward import capture_image_features, match_image_features
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
    # sequence-level ratio: a row's ratio is its own mean, so cutting the group by rows must keep it
    "gspo_mu2": ["algorithm.policy_loss=gspo", "algorithm.loss_aggregation=grpo", "algorithm.num_iterations=2"],
    "mask_truncated_bnpo": ["algorithm.mask_truncated=true", "algorithm.loss_aggregation=bnpo"],
    "mini_batches2_mu2": ["algorithm.mini_batches=2", "algorithm.num_iterations=2"],
    "kl_in_reward": ["algorithm.beta=0.1", "algorithm.kl_penalty=reward"],
    "tis_cap": ["algorithm.tis_cap=2.0"],
    "frozen_tower_kl": ["model.freeze_vision_tower=true", "algorithm.beta=0.05", "algorithm.num_iterations=2"],
    "lora": ["model.lora.enabled=true", "model.lora.r=4", "algorithm.beta=0.05"],
}


def with_features(trainer, group):
    """The group with its prompt's image features recorded, as the rollout records them with a frozen tower."""
    recorded: list = []
    with torch.no_grad(), capture_image_features(trainer.run.model, recorded):
        completion_logprobs(trainer.run.model, group.prompt, group.completion_ids[:1], group.completion_mask[:1])
    group.image_features = match_image_features(group.prompt, recorded)
    assert group.image_features is not None
    return group


@pytest.mark.parametrize("case", list(CASES))
def test_every_loss_setting_is_exact_under_a_token_budget(synthetic_data, tmp_path, case):
    extra = CASES[case]
    runs = {}
    for name, budget in (("default", []), ("budget", ["trainer.max_tokens_per_micro_batch=BUDGET"]), ("one", [
            "trainer.max_tokens_per_micro_batch=1"])):
        trainer = make_trainer(synthetic_data, tmp_path / name, *extra, *[b for b in budget if "BUDGET" not in b])
        groups = [fixed_group(trainer, 0, i, group_size=G, length=LENGTH, sampler_logp=True) for i in range(2)]
        if "model.freeze_vision_tower=true" in extra:
            groups = [with_features(trainer, g) for g in groups]
        prompt_tokens = max(int(g.prompt["input_ids"].shape[-1]) for g in groups)
        if budget and budget[0].endswith("BUDGET"):
            trainer.run.cfg.trainer.max_tokens_per_micro_batch = prompt_tokens + 3 * LENGTH
        initial = weights(trainer.run.model)
        metrics = policy_update(trainer.run, copy.deepcopy(groups), trainer.schedule.stage_at(0), trainer.reference)
        trainer.run.close()
        runs[name] = (metrics, weights(trainer.run.model), initial)
    default, moved, initial = runs["default"]
    assert max_diff(initial, moved) > 1e-4, "the step did not move the weights"
    for name in ("budget", "one"):
        metrics, after, _ = runs[name]
        assert metrics["update/micro_batches"] > default["update/micro_batches"]
        assert metrics["loss"] == pytest.approx(default["loss"], rel=1e-5, abs=1e-7), name
        for key in ("update/vision_encoder_calls", "update/vision_reused"):
            if "model.freeze_vision_tower=true" in extra and key == "update/vision_encoder_calls":
                assert metrics[key] == 0, (name, key)
        diff = max_diff(moved, after)
        print(f"{case} {name}: {diff:.3g}")
        assert diff <= 1e-6, (case, name, diff)
