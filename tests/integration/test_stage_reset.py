"""`stages[].reset_optimizer` in a real GRPO run on the tiny model: at the reset stage's first step AdamW starts
over (step counts 1 after it; its first update moves every parameter by exactly the learning rate, as a fresh Adam's
first step does), the schedule restarts at its peak, and a resume mid-stage after the reset — or exactly at the
reset step — ends with the same weights as the straight run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmrl.config import load_config
from mmrl.rl.trainer import GRPOLoop
from mmrl.runs.logger import read_metrics

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "tests" / "grpo_tiny.yaml"
REWARD = ROOT / "tests" / "fixtures" / "trainer" / "varied_reward.py"  # a spread in every group: non-zero advantages
LR = 1e-3
STAGES = "[{name: a, steps: 2}, {name: b, steps: 3, reset_optimizer: true}]"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from data_pipelines.synthetic import build_synthetic

    return build_synthetic(["color"], 8, 0, tmp_path_factory.mktemp("reset-data"), image_size=56)


def _train(data: Path, out: Path, *extra: str) -> Path:
    cfg = load_config(
        CONFIG,
        [
            f"data.train={data}",
            f"trainer.output_dir={out}",
            "trainer.report_to=[jsonl]",
            "trainer.progress=false",
            "trainer.save_steps=1",
            "trainer.keep_last=10",
            "trainer.sample_steps=0",
            "trainer.prompts_per_step=1",
            "rollout.group_size=2",
            "rollout.max_completion_length=4",
            f"rewards=[{{name: '{REWARD}:reward'}}]",
            f"optimizer.lr={LR}",
            "optimizer.schedule=linear",
            "optimizer.weight_decay=0.0",
            "optimizer.eps=1e-15",  # the gradients here are ~1e-7: eps must not shrink the step
            f"stages={STAGES}",
            *extra,
        ],
    )
    return GRPOLoop(cfg).train()


def _weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step-{step}" / "model.safetensors"))


def _adam_steps(run: Path, step: int) -> set[float]:
    state = torch.load(run / "checkpoints" / f"step-{step}" / "trainer_state.pt", weights_only=False)["optimizer"]
    return {float(s["step"]) for s in state["state"].values()}


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory) -> Path:
    return _train(data, tmp_path_factory.mktemp("straight"))


def test_the_reset_zeroes_adam_and_restarts_the_schedule(straight):
    rows = read_metrics(straight)
    assert [r["stage_name"] for r in rows] == ["a", "a", "b", "b", "b"]
    # rows[k]["lr"]: the rate of step k + 1. Linear decay over 2 steps, then over 3 from the peak again.
    assert [r["lr"] for r in rows[:4]] == pytest.approx([LR / 2, LR, 2 * LR / 3, LR / 3])
    assert _adam_steps(straight, 2) == {2.0} and _adam_steps(straight, 3) == {1.0}  # counted from the reset
    # A fresh AdamW's first step is lr * g / (|g| + eps) per element: +-lr wherever the gradient is not 0.
    before, after = _weights(straight, 2), _weights(straight, 3)
    moved = torch.cat([(after[k].float() - before[k].float()).abs().flatten() for k in before])
    moved = moved[moved > LR / 100]
    assert moved.numel() > 1000
    assert ((moved - LR).abs() < LR * 1e-2).float().mean() > 0.99
    # without the reset, the moments of stage a make the update differ from +-lr almost everywhere
    earlier = torch.cat([(before[k].float() - _weights(straight, 1)[k].float()).abs().flatten() for k in before])
    earlier = earlier[earlier > LR / 100]
    assert ((earlier - LR / 2).abs() < LR * 1e-2).float().mean() < 0.5


@pytest.mark.parametrize("resume_at", [2, 3])  # exactly at the reset step, and mid-stage after it
def test_a_resume_around_the_reset_ends_with_the_straight_runs_weights(straight, data, tmp_path, resume_at):
    resumed = _train(data, tmp_path / "resumed", f"trainer.resume={straight / 'checkpoints' / f'step-{resume_at}'}")
    expected, got = _weights(straight, 5), _weights(resumed, 5)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert _adam_steps(resumed, 5) == {3.0}
