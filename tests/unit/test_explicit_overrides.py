"""An explicit `trainer.max_steps` (command line or override) wins over derived run lengths, as in HF Trainer."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmrl.config import load_config
from mmrl.config.loader import apply_overrides
from mmrl.errors import ConfigError
from mmrl.rl.stages import StageSchedule
from mmrl.sft.trainer import sft_steps

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_max_steps_cuts_the_stages():
    cfg = load_config(CONFIGS / "vision_r1/ptst_grpo.yaml", ["trainer.max_steps=2"])
    assert cfg.trainer.max_steps == 2
    assert StageSchedule(cfg.stages, cfg).total_steps == 2
    assert [(s.steps, s.enabled) for s in cfg.stages] == [(2, True), (100, False), (100, False)]
    cfg = load_config(CONFIGS / "vision_r1/ptst_grpo.yaml", ["trainer.max_steps=150"])
    schedule = StageSchedule(cfg.stages, cfg)
    assert schedule.total_steps == 150 and schedule.stage_at(149).name == "ptst_8k"


def test_without_explicit_max_steps_the_stages_decide():
    cfg = load_config(CONFIGS / "vision_r1/ptst_grpo.yaml", ["stages.0.steps=3"])
    assert cfg.trainer.max_steps == 103
    # Overrides applied later (pipeline steps) are explicit too, and re-derive from the stages otherwise.
    assert apply_overrides(cfg, {"stages.1.steps": 4}).trainer.max_steps == 7
    assert apply_overrides(cfg, {"trainer.max_steps": 5}).trainer.max_steps == 5


def test_max_steps_beyond_the_stages_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"trainer.max_steps=250 \(given explicitly\) is more than the stages' 200"):
        load_config(CONFIGS / "vision_r1/ptst_grpo.yaml", ["trainer.max_steps=250"])


def test_max_steps_replaces_the_recipes_epochs():
    recipe = load_config(CONFIGS / "vision_r1/cold_start_sft.yaml")
    assert recipe.trainer.num_epochs == 2 and sft_steps(recipe, 64) == 4
    cfg = load_config(CONFIGS / "vision_r1/cold_start_sft.yaml", ["trainer.max_steps=2"])
    assert cfg.trainer.num_epochs is None and sft_steps(cfg, 64) == 2
    # Both on the command line: the one given last wins.
    cfg = load_config(CONFIGS / "vision_r1/cold_start_sft.yaml", ["trainer.max_steps=2", "trainer.num_epochs=1"])
    assert cfg.trainer.num_epochs == 1 and sft_steps(cfg, 64) == 2  # ceil(1 * 64 / 32)
    cfg = load_config(CONFIGS / "vision_r1/cold_start_sft.yaml", ["trainer.num_epochs=1", "trainer.max_steps=3"])
    assert cfg.trainer.num_epochs is None and sft_steps(cfg, 64) == 3


def test_list_errors_name_the_index_and_the_command_line():
    with pytest.raises(ConfigError, match=r"^command line: stages.1.group_size must be >= 2 \(got 1\)$"):
        load_config(CONFIGS / "vision_r1/ptst_grpo.yaml", ["stages.1.group_size=1"])
    with pytest.raises(ConfigError, match=r"^command line: unknown key 'stages.1.grop_size' \(did you mean "
                                          r"'stages.1.group_size'\?\)$"):
        load_config(CONFIGS / "vision_r1/ptst_grpo.yaml", ["stages.1.grop_size=4"])
    with pytest.raises(ConfigError, match=r"stages is empty in this config.*stages=\[\.\.\.\]"):
        load_config(CONFIGS / "tests/grpo_tiny.yaml", ["stages.0.group_size=4"])
