"""The runnable examples in docstrings stay true (rewards, losses, frames, config loading, schedules, metrics)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "mmrl.api",
    "mmrl.console",
    "mmrl.config.added_fields",
    "mmrl.config.loader",
    "mmrl.config.trl_names",
    "mmrl.preflight",
    "mmrl.data.boxes",
    "mmrl.data.checks",
    "mmrl.data.sample",
    "mmrl.optim",
    "mmrl.errors",
    "mmrl.eval.metrics",
    "mmrl.rewards.accuracy",
    "mmrl.rewards.boxes",
    "mmrl.rewards.math_answers",
    "mmrl.rewards.parsing",
    "mmrl.rewards.curr_reft",
    "mmrl.rewards.extraction",
    "mmrl.rewards.format",
    "mmrl.rewards.gold_check",
    "mmrl.rewards.grounding",
    "mmrl.rewards.gui",
    "mmrl.rewards.length",
    "mmrl.rl.advantages",
    "mmrl.rl.kl",
    "mmrl.rl.losses",
    "mmrl.rl.aggregations",
    "mmrl.rl.mismatch",
    "mmrl.rl.entropy",
    "mmrl.rl.micro_batches",
    "mmrl.rl.async_rollout",
    "mmrl.rl.rollout_worker",
    "mmrl.data.prompt_order",
    "mmrl.rl.stages",
    "mmrl.workflow.runner",
    "mmrl.generation.types",
    "mmrl.generation.backends",
    "mmrl.generation.decoding",
    "mmrl.generation.openai_format",
    "mmrl.generation.trained",
    "mmrl.registry",
    "data_pipelines.registry",
    "data_pipelines.rejection",
    "data_pipelines.cold_start.cache",
    "data_pipelines.cold_start.config",
    "data_pipelines.cold_start.filters",
    "data_pipelines.cold_start.remote",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert result.attempted > 0, f"{name} has no runnable example"


def test_every_registered_reward_has_a_runnable_example():
    from mmrl.rewards.registry import get_reward, list_rewards

    names = list_rewards()
    assert len(names) >= 16
    missing = [n for n in names if ">>>" not in (get_reward(n).__doc__ or "")]
    assert not missing, f"rewards without a docstring example: {missing}"
