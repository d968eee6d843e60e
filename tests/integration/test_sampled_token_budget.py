"""`trainer.max_sampled_tokens` in a real GRPO run on the tiny model: the run ends at the step whose completions bring
the count to the budget (here inside the second stage), the same samples as a run without the budget up to there;
a resume from a checkpoint before the end stops at the same step with the same weights and count."""

from __future__ import annotations

from itertools import accumulate
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmrl.config import load_config
from mmrl.rl.trainer import GRPOLoop
from mmrl.runs.logger import read_metrics

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "tests" / "grpo_tiny.yaml"
STAGES = "[{name: short, steps: 2, group_size: 4, max_completion_length: 3}, {name: long, steps: 6}]"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from data_pipelines.synthetic import build_synthetic

    return build_synthetic(["color"], 8, 0, tmp_path_factory.mktemp("budget-data"), image_size=56)


def _train(data: Path, out: Path, *extra: str) -> Path:
    cfg = load_config(CONFIG, [
        f"data.train={data}", f"trainer.output_dir={out}", "trainer.report_to=[jsonl]", "trainer.progress=false",
        "trainer.save_steps=1", "trainer.keep_last=10", "trainer.sample_steps=0", "trainer.prompts_per_step=2",
        "rollout.group_size=2", "rollout.max_completion_length=8", f"stages={STAGES}", *extra])
    return GRPOLoop(cfg).train()


@pytest.fixture(scope="module")
def unbudgeted(data, tmp_path_factory) -> list[dict]:
    return read_metrics(_train(data, tmp_path_factory.mktemp("unbudgeted")))


@pytest.fixture(scope="module")
def budget(unbudgeted) -> int:
    totals = list(accumulate(r["completion_tokens"] for r in unbudgeted))
    assert totals[3] > totals[2] > 0  # the tiny model samples something at every step
    return totals[3] - 1  # reached by step 4's tokens, not by step 3's: the run must end at step 4


@pytest.fixture(scope="module")
def budgeted(data, budget, tmp_path_factory) -> Path:
    return _train(data, tmp_path_factory.mktemp("budgeted"), f"trainer.max_sampled_tokens={budget}")


def test_the_run_ends_at_the_step_that_reaches_the_budget(unbudgeted, budget, budgeted):
    rows = read_metrics(budgeted)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # 8 planned; step 4 is the second of stage 'long'
    assert [r["stage_name"] for r in rows] == ["short", "short", "long", "long"]
    assert [r["completion_tokens"] for r in rows] == [r["completion_tokens"] for r in unbudgeted[:4]]
    assert [r["completion_tokens/total"] for r in rows] == list(accumulate(r["completion_tokens"] for r in rows))
    assert rows[-1]["completion_tokens/total"] >= budget > rows[-2]["completion_tokens/total"]
    assert sorted(p.name for p in (budgeted / "checkpoints").iterdir()) == [f"step-{s}" for s in (1, 2, 3, 4)]


def test_a_resume_before_the_end_stops_at_the_same_step_with_the_same_weights(data, budget, budgeted, tmp_path):
    resumed = _train(data, tmp_path / "resumed", f"trainer.max_sampled_tokens={budget}",
                     f"trainer.resume={budgeted / 'checkpoints' / 'step-2'}")
    rows = read_metrics(resumed)
    assert [r["step"] for r in rows] == [3, 4]
    assert rows[-1]["completion_tokens/total"] == read_metrics(budgeted)[-1]["completion_tokens/total"]
    expected = load_file(str(budgeted / "checkpoints" / "step-4" / "model.safetensors"))
    got = load_file(str(resumed / "checkpoints" / "step-4" / "model.safetensors"))
    assert all(torch.equal(expected[k], got[k]) for k in expected)
