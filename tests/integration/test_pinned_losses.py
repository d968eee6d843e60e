"""Pinned expected values (torchtune's habit): the first steps of a tiny GRPO recipe at fixed seeds.

The recipe spells out every algorithm setting (GRPO advantages, PPO clip with clip-higher, DAPO token aggregation, k3
KL in the loss, two passes over each rollout so the importance ratio leaves 1 and clipping happens), so a silent
change in a formula or a default moves a number here and fails the test named after that number. The values were
measured with `OMP_NUM_THREADS=1` and reproduce to ~1e-7 relative with 2 threads; the tolerance (1e-4 relative)
absorbs reduction order, not a changed formula (those move the values by 1e-2 or more).

When a change is meant to move them: rerun this file, check the new values against the intent of the change, and
replace `PINNED` in the same commit, saying why.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmrl.config import load_config
from mmrl.rl.trainer import GRPOLoop

ROOT = Path(__file__).resolve().parents[2]
RECIPE = {
    "rollout.max_completion_length": 6,
    "rewards": f"[{{name: '{ROOT / 'tests' / 'fixtures' / 'trainer' / 'varied_reward.py'}:reward'}}]",
    "optimizer.lr": 1e-3,
    "trainer.max_steps": 3,
    "trainer.seed": 0,
    "algorithm.advantage": "grpo",
    "algorithm.policy_loss": "ppo",
    "algorithm.loss_aggregation": "dapo",
    "algorithm.eps_low": 0.2,
    "algorithm.eps_high": 0.28,
    "algorithm.beta": 0.04,
    "algorithm.kl_penalty": "loss",
    "algorithm.kl_estimator": "k3",
    "algorithm.num_iterations": 2,
}
# What feeds each pinned metric: the formulas a failure points at.
FEEDS = {
    "loss": "the policy loss (PPO clip, DAPO token aggregation) plus beta x KL (rl/losses.py, rl/kl.py)",
    "grad_norm": "the loss's gradient: advantages (rl/advantages.py), clipping and aggregation (rl/losses.py)",
    "kl": "the k3 KL estimator against the reference (rl/kl.py, rl/reference.py)",
    "entropy": "the sampling distribution's entropy (logits / temperature; rl/update.py)",
    "reward/total": "the rewards and their combination (rewards/composite.py) on the sampled completions",
    "loss/ratio_mean": "the importance ratio of the second pass (log-probs, rl/losses.py)",
    "loss/clip_frac_high": "the upper clip range 1 + eps_high (rl/losses.py)",
    "loss/clip_frac_low": "the lower clip range 1 - eps_low (rl/losses.py)",
}
# step -> metric -> value, measured on this recipe (see the module docstring).
PINNED: dict[int, dict[str, float]] = {
    1: {
        "loss": -0.05250984616577625,
        "grad_norm": 2.7397595643997192,
        "kl": 0.035556151531636715,
        "entropy": 6.906005779902141,
        "reward/total": 0.5041006524115801,
        "loss/ratio_mean": 1.054923415184021,
        "loss/clip_frac_high": 0.1666666641831398,
        "loss/clip_frac_low": 0.09375,
    },
    2: {
        "loss": -0.06608993624104187,
        "grad_norm": 1.4951089024543762,
        "kl": 0.05664924532175064,
        "entropy": 6.906259139378865,
        "reward/total": 0.629757534712553,
        "loss/ratio_mean": 1.0216389894485474,
        "loss/clip_frac_high": 0.1145833320915699,
        "loss/clip_frac_low": 0.1041666679084301,
    },
    3: {
        "loss": -0.062213209457695484,
        "grad_norm": 1.6052595973014832,
        "kl": 0.04927811212837696,
        "entropy": 6.902716954549153,
        "reward/total": 0.6111029153689742,
        "loss/ratio_mean": 1.032017171382904,
        "loss/clip_frac_high": 0.05208333395421505,
        "loss/clip_frac_low": 0.03125,
    },
}


@pytest.fixture(scope="module")
def recipe_metrics(tmp_path_factory) -> dict[int, dict[str, float]]:
    from data_pipelines.synthetic import build_synthetic

    work = tmp_path_factory.mktemp("pinned")
    data = build_synthetic(["color"], 12, 0, work / "data", image_size=56)
    run = work / "run"
    overrides = {
        **RECIPE,
        "data.train": data,
        "trainer.output_dir": run,
        "trainer.report_to": "[jsonl]",
        "trainer.progress": "false",
        "trainer.save_steps": 0,
        "trainer.sample_steps": 0,
    }
    cfg = load_config(ROOT / "configs" / "tests" / "grpo_tiny.yaml", [f"{k}={v}" for k, v in overrides.items()])
    GRPOLoop(cfg).train()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: {name: row[name] for name in FEEDS} for row in rows if "loss" in row}


@pytest.mark.parametrize("metric", list(FEEDS))
def test_pinned(recipe_metrics, metric):
    got = {step: values[metric] for step, values in recipe_metrics.items()}
    pinned = {step: values[metric] for step, values in PINNED.items()}
    assert sorted(got) == sorted(pinned), f"steps logged {sorted(got)}, pinned {sorted(pinned)}"
    for step in sorted(pinned):
        assert got[step] == pytest.approx(pinned[step], rel=1e-4, abs=1e-6), (
            f"step {step} {metric}: pinned {pinned[step]!r}, got {got[step]!r}; a change in {FEEDS[metric]}"
        )
