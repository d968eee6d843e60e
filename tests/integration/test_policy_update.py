"""The real `policy_update` on the tiny model (fp32, CPU) with fixed groups: what a step does must not depend on how
the groups are cut into micro-batches or on how many processes run it.

Exactness settings: fp32 on CPU, 4 steps, max abs weight difference <= 1e-5. SGD where AdamW would turn reduction-order
noise into larger differences (AdamW's figure is asserted and printed too)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmrl.config import load_config
from mmrl.errors import UserError
from mmrl.rl.advantages import compute_advantages
from mmrl.rl.trainer import GRPOLoop
from mmrl.rl.training_batch import TrainingBatch, training_batch
from mmrl.rl.update import policy_update

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "trainer"
CONFIG = ROOT / "configs" / "tests" / "grpo_tiny.yaml"
sys.path.insert(0, str(FIXTURES))

from fixed_groups import fixed_group, global_batch  # noqa: E402


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory) -> Path:
    from data_pipelines.synthetic import build_synthetic

    return build_synthetic(["color"], 12, 0, tmp_path_factory.mktemp("synthetic"), image_size=56)


def make_trainer(data: Path, out: Path, *extra: str) -> GRPOLoop:
    overrides = [f"data.train={data}", f"trainer.output_dir={out}", "trainer.report_to=[jsonl]", "trainer.progress=false",
                 "model.dtype=fp32", "trainer.device=cpu", *extra]
    return GRPOLoop(load_config(CONFIG, overrides))


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def batch_of(trainer: GRPOLoop, groups) -> TrainingBatch:
    return training_batch(trainer.run, groups, trainer.schedule.stage_at(0), trainer.reference)


def update(trainer: GRPOLoop, groups, batch: TrainingBatch | None = None) -> dict[str, float]:
    """The loop's step on `groups`: the advantages (`batch`, when the test reads it), then the update."""
    return policy_update(trainer.run, batch or batch_of(trainer, groups), trainer.schedule.stage_at(0))


def count_optimizer_steps(trainer: GRPOLoop) -> list[int]:
    calls: list[int] = []
    original = trainer.run.optimizer_step

    def counted(loss_value):
        calls.append(1)
        return original(loss_value)

    trainer.run.optimizer_step = counted
    return calls


# -- 2 processes against 1 -----------------------------------------------------------------------------------------

VARIANTS = {
    # reinforce_pp (global token-level whitening), bnpo, 2 mini-batches x mu 2, and a step where the online filter left
    # the ranks uneven (3 groups: 2 on rank 0, 1 on rank 1).
    "sgd_rpp_bnpo": {"overrides": ["algorithm.advantage=reinforce_pp", "algorithm.loss_aggregation=bnpo",
                                   "algorithm.mini_batches=2", "algorithm.num_iterations=2",
                                   "trainer.prompts_per_step=4", "optimizer.name=sgd", "optimizer.lr=0.5"],
                     "drop": [2, 3]},
    # GSPO with rloo advantages and the KL (k1) in the reward; the groups carry rollout-engine log-probs, so the TIS
    # weights act and the rollout/* mismatch metrics must be those of every process's groups.
    "sgd_gspo_kl_reward": {"sampler_logp": True, "overrides": ["algorithm.policy_loss=gspo", "algorithm.advantage=rloo",
                                         "algorithm.eps_low=0.003", "algorithm.eps_high=0.004", "algorithm.beta=0.1",
                                         "algorithm.kl_penalty=reward", "trainer.prompts_per_step=4",
                                         "optimizer.name=sgd", "optimizer.lr=0.5"]},
    # AdamW with weight decay, low_var_kl in the loss, and a step whose groups all have zero advantage.
    "adamw_flat_step": {"overrides": ["algorithm.loss_aggregation=dapo", "algorithm.beta=0.05",
                                      "algorithm.kl_estimator=low_var_kl", "trainer.prompts_per_step=4",
                                      "optimizer.lr=1e-3", "optimizer.weight_decay=0.1"],
                        "flat_step": 2},
    # A token budget (trainer.max_tokens_per_micro_batch=45): prompts of 30 to 58 tokens, 4 completions of up to 6
    # tokens, so a group takes 1 to 4 forwards and the ranks run different numbers of forwards per optimizer step;
    # 2 mini-batches and a step with uneven ranks on top.
    "sgd_token_budget": {"overrides": ["algorithm.loss_aggregation=grpo", "algorithm.mini_batches=2",
                                       "trainer.max_tokens_per_micro_batch=45", "trainer.prompts_per_step=4",
                                       "optimizer.name=sgd", "optimizer.lr=0.5"],
                         "drop": [1, 3]},
    # CISPO (issue 31) with a fixed entropy bonus on the top half of the tokens by entropy: the bonus's global token
    # count and the entropy threshold are taken over both ranks' tokens (an all-gather), so 2 ranks select the same
    # tokens as 1; TIS weights on the sampler's log-probs, a step with uneven ranks.
    "sgd_cispo_entropy_top_half": {"sampler_logp": True, "overrides": [
        "algorithm.policy_loss=cispo", "algorithm.eps_low=1", "algorithm.eps_high=4", "algorithm.loss_aggregation=dapo",
        "algorithm.entropy_coef=0.05", "algorithm.top_entropy_quantile=0.5", "trainer.prompts_per_step=4",
        "optimizer.name=sgd", "optimizer.lr=0.5"], "drop": [2, 0]},
}


def test_two_processes_match_one_process_of_the_same_global_batch(synthetic_data, tmp_path, port_args):
    variants = json.dumps(VARIANTS)
    script = str(FIXTURES / "exact_update.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("WORLD_SIZE", None)
    one = subprocess.run([sys.executable, script, str(CONFIG), str(synthetic_data), str(tmp_path / "one"), variants],
                         capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", *port_args(), "--config_file",
                          str(ROOT / "configs" / "accelerate" / "ddp_cpu_2proc.yaml"), script, str(CONFIG),
                          str(synthetic_data), str(tmp_path / "two"), variants],
                         capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert two.returncode == 0, two.stderr[-3000:]
    from transformers import AutoModelForImageTextToText

    from mmrl.models.tiny import ensure_tiny_model

    initial = weights(AutoModelForImageTextToText.from_pretrained(ensure_tiny_model("tiny")))
    for name in VARIANTS:
        ranks = [json.loads((tmp_path / "two" / f"{name}-rank-{r}.json").read_text()) for r in (0, 1)]
        # Two ranks really ran, in one process group of 2, and made the same number of optimizer steps.
        assert [(r["rank"], r["world_size"]) for r in ranks] == [(0, 2), (1, 2)]
        (single,) = [json.loads((tmp_path / "one" / f"{name}-rank-0.json").read_text())]
        assert single["world_size"] == 1
        assert ranks[0]["steps"] == ranks[1]["steps"] == single["steps"]
        # The logged loss metrics (loss, clip fractions, ratio and KL means) are those of the global batch on every
        # rank, not of the rank's own share.
        for rank in ranks:
            assert any(key.startswith("rollout/") for row in rank["metrics"] for key in row) == \
                VARIANTS[name].get("sampler_logp", False)
            for got, want in zip(rank["metrics"], single["metrics"], strict=True):
                assert got.keys() == want.keys(), (name, got, want)
                for key in want:
                    assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-4), (name, rank["rank"], key, got, want)
        a, b = torch.load(tmp_path / "one" / f"{name}.pt"), torch.load(tmp_path / "two" / f"{name}.pt")
        assert max_diff(a, initial) > 1e-3, f"{name}: the weights did not move"
        diff = max_diff(a, b)
        print(f"{name}: max abs weight diff 1 vs 2 processes = {diff:.3g}")
        assert diff <= 1e-5, (name, diff)


# -- one process ----------------------------------------------------------------------------------------------------


def test_bnpo_does_not_grow_with_the_number_of_micro_batches(synthetic_data, tmp_path):
    one = make_trainer(synthetic_data, tmp_path / "a", "algorithm.loss_aggregation=bnpo", "optimizer.name=sgd",
                       "optimizer.lr=0.5")
    eight = make_trainer(synthetic_data, tmp_path / "b", "algorithm.loss_aggregation=bnpo", "optimizer.name=sgd",
                         "optimizer.lr=0.5")
    initial = weights(one.run.model)
    for step in range(4):
        group = fixed_group(one, step, 0)
        loss_one = update(one, [group])["loss"]
        loss_eight = update(eight, [copy.deepcopy(group) for _ in range(8)])["loss"]
        assert loss_one != 0 and loss_eight == pytest.approx(loss_one, rel=1e-5)
    assert max_diff(weights(one.run.model), initial) > 1e-3
    assert max_diff(weights(one.run.model), weights(eight.run.model)) <= 1e-5


def test_every_mini_batch_is_an_optimizer_step_even_with_few_groups(synthetic_data, tmp_path):
    trainer = make_trainer(synthetic_data, tmp_path, "algorithm.mini_batches=4", "trainer.prompts_per_step=8")
    calls = count_optimizer_steps(trainer)
    # The online filter kept 6 of the 8 groups: still 4 optimizer steps (a ceiling split would make 3).
    metrics = update(trainer, [fixed_group(trainer, 0, i) for i in range(6)])
    assert len(calls) == 4 and metrics["optimizer_steps"] == 4
    calls.clear()
    update(trainer, [fixed_group(trainer, 1, 0)])  # a single group: 4 steps, three of them with zero gradient
    assert len(calls) == 4


def test_prompts_per_step_must_divide_into_processes_times_mini_batches(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match=r"prompts_per_step \(6\) must be a multiple of .*2 x 2 = 4.*prompts_per_step=8"):
        load_config(CONFIG, ["algorithm.mini_batches=2", "trainer.prompts_per_step=6"])
    load_config(CONFIG, ["algorithm.mini_batches=2", "trainer.prompts_per_step=8"])  # fine
    load_config(CONFIG, ["algorithm.mini_batches=1", "trainer.prompts_per_step=3"])  # one mini-batch: any count


def test_a_step_of_zero_advantage_groups_still_steps_the_optimizer(synthetic_data, tmp_path):
    """TRL/verl semantics on one process as on several: zero gradient, and AdamW still moves by its momentum."""
    trainer = make_trainer(synthetic_data, tmp_path, "optimizer.lr=1e-3")
    update(trainer, [fixed_group(trainer, 0, i) for i in range(2)])
    before = weights(trainer.run.model)
    metrics = update(trainer, [fixed_group(trainer, 1, i, flat=True) for i in range(2)])
    assert metrics["grad_norm"] == 0.0 and metrics["optimizer_steps"] == 1
    assert max_diff(before, weights(trainer.run.model)) > 1e-5, "AdamW did not step on zero gradients"
    # optimizer.state only holds parameters that were stepped: check every trainable one is there.
    state = trainer.run.optimizer.state
    assert all(p in state and state[p] for p in trainer.run.params), "some parameter has no AdamW state"


def test_no_dropout_in_the_update_forwards_the_first_ratio_is_one(synthetic_data, tmp_path):
    trainer = make_trainer(synthetic_data, tmp_path, "model.lora.enabled=true", "model.lora.r=4",
                           "model.lora.dropout=0.5", "algorithm.num_iterations=2", "optimizer.lr=1e-30")
    model = trainer.run.model
    model.train()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # LoRA B starts at 0, which hides the dropout before it: give the adapter some weight
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.5)
    metrics = update(trainer, [fixed_group(trainer, 0, i) for i in range(2)])
    # lr 1e-30 leaves the weights as they were: every ratio of both passes is exactly 1 without dropout.
    assert metrics["loss/ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["loss/clip_frac_low"] == 0.0 and metrics["loss/clip_frac_high"] == 0.0
    assert load_config(None, []).model.lora.dropout == 0.0


def test_kl_in_the_reward_moves_the_advantages_of_equal_rewards(synthetic_data, tmp_path):
    trainer = make_trainer(synthetic_data, tmp_path, "algorithm.beta=0.2", "algorithm.kl_penalty=reward")
    with torch.no_grad():  # move the policy away from its frozen reference copy
        trainer.run.model.lm_head.weight.mul_(1.5)
    groups = [fixed_group(trainer, 0, i, flat=True) for i in range(2)]
    batch = batch_of(trainer, groups)
    metrics = update(trainer, groups, batch)
    assert metrics["loss/kl_mean"] != 0  # k1 per token (the fixed tokens are not samples of pi: any sign)
    for trained in batch.groups:
        group = trained.group
        assert trained.advantages.abs().max() > 0  # equal rewards, different KL: a learning signal
        k1 = torch.where(group.completion_mask > 0, trained.old_logp - trained.ref_logp, 0.0).sum(-1)
        expected = compute_advantages("grpo", group.rewards - 0.2 * k1, torch.zeros(4, dtype=torch.long),
                                      scale=True, eps=1e-4)
        assert torch.allclose(trained.advantages, expected, atol=1e-5)


def test_reinforce_pp_whitens_the_step_token_level(synthetic_data, tmp_path):
    trainer = make_trainer(synthetic_data, tmp_path, "algorithm.advantage=reinforce_pp")
    groups = global_batch(trainer, 0, 3)
    batch = batch_of(trainer, groups)
    update(trainer, groups, batch)
    adv = torch.cat([g.advantages for g in batch.groups]).double()
    tokens = torch.cat([g.completion_mask.sum(-1) for g in groups]).double()
    valid = ~torch.isnan(torch.cat([g.rewards for g in groups]))
    # Token-weighted over the step's scorable completions: mean 0 and (unbiased) std 1.
    w = tokens * valid
    mean = float((w * adv).sum() / w.sum())
    var = float((w * (adv - mean).square()).sum() / (w.sum() - 1))
    assert mean == pytest.approx(0.0, abs=1e-5) and var == pytest.approx(1.0, abs=1e-3)


def test_a_zero_advantage_group_costs_no_forward_at_all(synthetic_data, tmp_path, monkeypatch):
    """Several mini-batches need old log-probs, but only for the groups whose loss is not exactly 0: a group of equal
    rewards (no KL term) gets neither its old log-probs nor its training forward computed."""
    import mmrl.rl.step_logprobs as logprobs_module

    trainer = make_trainer(synthetic_data, tmp_path, "algorithm.mini_batches=2", "trainer.prompts_per_step=4",
                           "optimizer.name=sgd", "optimizer.lr=0.5")
    forwards: list[int] = []
    real = logprobs_module.completion_logprobs

    def counted(model, prompt, completion_ids, *args, **kwargs):
        forwards.append(id(completion_ids))
        return real(model, prompt, completion_ids, *args, **kwargs)

    monkeypatch.setattr(logprobs_module, "completion_logprobs", counted)  # old log-probs
    real_training = trainer.run.logprobs

    def counted_training(prompt, completion_ids, *args, **kwargs):  # the training forward (what DDP/FSDP wrap)
        forwards.append(id(completion_ids))
        return real_training(prompt, completion_ids, *args, **kwargs)

    monkeypatch.setattr(trainer.run, "logprobs", counted_training)
    groups = [fixed_group(trainer, 0, i, flat=i in (1, 2)) for i in range(4)]
    before = weights(trainer.run.model)
    batch = batch_of(trainer, groups)
    metrics = update(trainer, groups, batch)
    per_group = [forwards.count(id(g.completion_ids)) for g in groups]
    assert per_group == [2, 0, 0, 2]  # old log-probs + training forward for the two groups with a signal
    assert batch.groups[1].old_logp is None and metrics["optimizer_steps"] == 2
    assert max_diff(before, weights(trainer.run.model)) > 1e-3
