"""`trainer.max_tokens_per_micro_batch` on the real `policy_update` (tiny model, fp32, CPU, fixed groups with a reward
spread): a token budget only splits the gradient accumulation, so one step lands on the same weights as the default
micro-batching (one group per forward), while the update really ran more, smaller forwards."""

from __future__ import annotations

import copy
import dataclasses
import sys
from pathlib import Path

import pytest
import torch

from mmrl.config import load_config
from mmrl.rl.micro_batches import micro_batches
from mmrl.rl.trainer import GRPOLoop
from mmrl.rl.training_batch import training_batch
from mmrl.rl.update import policy_update

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "tests" / "grpo_tiny.yaml"
sys.path.insert(0, str(ROOT / "tests" / "fixtures" / "trainer"))

from fixed_groups import fixed_group  # noqa: E402

G, LENGTH = 8, 10


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory) -> Path:
    from data_pipelines.synthetic import build_synthetic

    return build_synthetic(["color"], 6, 0, tmp_path_factory.mktemp("synthetic"), image_size=56)


def make_trainer(data: Path, out: Path, *extra: str) -> GRPOLoop:
    overrides = [f"data.train={data}", f"trainer.output_dir={out}", "trainer.report_to=[jsonl]", "trainer.progress=false",
                 "model.dtype=fp32", "trainer.device=cpu", "optimizer.name=sgd", "optimizer.lr=0.5", *extra]
    return GRPOLoop(load_config(CONFIG, overrides))


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def one_step(trainer: GRPOLoop, groups) -> dict[str, float]:
    stage = trainer.schedule.stage_at(0)
    metrics = policy_update(trainer.run, training_batch(trainer.run, copy.deepcopy(groups), stage, trainer.reference),
                            stage)
    trainer.run.close()
    return metrics


CASES = {
    "dapo": ["algorithm.loss_aggregation=dapo"],
    "grpo": ["algorithm.loss_aggregation=grpo"],
    "bnpo": ["algorithm.loss_aggregation=bnpo"],
    # two passes (old log-probs in pieces) and a KL in the loss (reference log-probs in pieces)
    "dr_grpo_mu2_kl": ["algorithm.loss_aggregation=dr_grpo", "algorithm.advantage=dr_grpo",
                       "algorithm.num_iterations=2", "algorithm.beta=0.05"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_token_budget_gives_the_same_weights_with_more_micro_batches(synthetic_data, tmp_path, case):
    reference = make_trainer(synthetic_data, tmp_path / "default", *CASES[case])
    # Two prompts, G=8 completions of random lengths 1..10 with random rewards; the rollout engine's log-probs too
    # (the TIS weights are sliced with the rows).
    groups = [fixed_group(reference, 0, i, group_size=G, length=LENGTH, sampler_logp=(i == 0)) for i in range(2)]
    prompt_tokens = max(int(g.prompt["input_ids"].shape[-1]) for g in groups)  # the prompts differ in length
    initial = weights(reference.run.model)
    default = one_step(reference, groups)
    passes = reference.cfg.algorithm.num_iterations
    assert default["update/micro_batches"] == 2 * passes  # one forward per group per pass
    assert default["update/micro_batch_tokens_max"] == prompt_tokens + G * LENGTH
    assert max_diff(initial, weights(reference.run.model)) > 1e-3, "the step did not move the weights"

    # three full-length completions per forward at most; then a budget smaller than the prompt alone, so every
    # completion goes alone
    for budget in (prompt_tokens + 3 * LENGTH, 1):
        budgeted = make_trainer(synthetic_data, tmp_path / f"budget-{budget}", *CASES[case],
                                f"trainer.max_tokens_per_micro_batch={budget}")
        split = one_step(budgeted, groups)
        if budget == 1:
            assert split["update/micro_batches"] == 2 * G * passes
        else:
            assert 2 * passes < split["update/micro_batches"] < 2 * G * passes
            assert split["update/micro_batch_tokens_max"] <= budget
        assert split["loss"] == pytest.approx(default["loss"], rel=1e-5, abs=1e-7)
        diff = max_diff(weights(reference.run.model), weights(budgeted.run.model))
        print(f"{case}: max abs weight diff, default vs budget {budget}: {diff:.3g}")
        assert diff <= 1e-6, (budget, diff)


def test_the_packing_respects_the_budget_and_keeps_every_row_once(synthetic_data, tmp_path):
    trainer = make_trainer(synthetic_data, tmp_path)
    group = fixed_group(trainer, 3, 0, group_size=G, length=LENGTH)
    trainer.run.close()
    prompt_tokens = int(group.prompt["input_ids"].shape[-1])
    lengths = group.completion_mask.sum(-1).tolist()
    for budget in (prompt_tokens + LENGTH, prompt_tokens + 2 * LENGTH + 1, prompt_tokens + G * LENGTH, 10**9):
        parts = micro_batches(group, budget)
        rows = sorted(r for p in parts for r in p.rows.tolist())
        assert rows == list(range(G))
        for part in parts:
            widths = [lengths[r] for r in part.rows.tolist()]
            assert part.width == max(widths) and part.tokens == prompt_tokens + len(widths) * part.width
            assert part.tokens <= budget
            piece = part.of(group)  # rows and columns cut together; nothing active is lost
            assert int(piece.completion_mask.sum()) == sum(widths)
    assert len(micro_batches(group, 10**9)) == 1  # a huge budget: the whole group in one forward
    # a budget of one token: one completion per micro-batch; models without prefix sharing count the prompt per row
    assert [len(p.rows) for p in micro_batches(group, 1)] == [1] * G
    (naive,) = micro_batches(group, 10**9, prompt_per_row=True)
    assert naive.tokens == G * prompt_tokens + G * naive.width
    # a mask with a hole (not right padding): the columns are cut after the last active token, none is lost
    holed = group.completion_mask.clone()
    holed[:, 1] = 0
    holed[:, -1] = 1
    piece = dataclasses.replace(group, completion_mask=holed)
    for part in micro_batches(piece, prompt_tokens + 2 * LENGTH):
        assert part.width == LENGTH and int(part.of(piece).completion_mask.sum()) == int(holed[part.rows].sum())
