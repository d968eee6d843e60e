"""TRL habits on mmrl's command line and in YAML: near-misses hear of the accepted TRL names and of the other
sections' fields, a TRL alias overrides the YAML's mmrl key (and back), and `output_dir` on train/sft is refused."""

from __future__ import annotations

import os

import pytest

from mmrl.cli import main
from mmrl.config import load_config
from mmrl.errors import ConfigError

TINY = "configs/tests/grpo_tiny.yaml"  # rollout.group_size 4, algorithm.loss_aggregation dapo, optimizer.lr 1e-4


@pytest.mark.parametrize(
    ("override", "hint"),
    [
        # were: warmup_ratio, min_new_tokens, trainer.resume, no hint, no hint
        ("optimizer.learning_rat=1e-5", "(did you mean 'optimizer.learning_rate' (TRL's name for 'optimizer.lr')?)"),
        ("rollout.num_generatons=8", "(did you mean 'rollout.num_generations' (TRL's name for 'rollout.group_size')?)"),
        ("trainer.lr=1e-5", "(did you mean 'optimizer.lr'?)"),
        ("max_prompt_length=64", "(did you mean 'data.max_prompt_length'?)"),
        ("logging_steps=1", ": TRL's 'logging_steps' has no effect in mmrl: mmrl logs every step"),
        ("learning_rat=1e-5", "(did you mean 'optimizer.learning_rate' (TRL's name for 'optimizer.lr')?)"),
        ("trainer.learning_rat=1e-5", "(did you mean 'optimizer.learning_rate' (TRL's name for 'optimizer.lr')?)"),
        ("grop_size=2", "(did you mean 'rollout.group_size'?)"),  # not stages.group_size: that needs an index
        ("trainer.max_step=3", "(did you mean 'trainer.max_steps'?)"),  # its own field, not TRL's same name
    ],
)
def test_a_near_miss_hears_of_trl_names_and_other_sections(capsys, override, hint):
    assert main(["config", "show", TINY, override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"command line: unknown key '{override.split('=')[0]}'" in err[0]
    assert hint in err[0], err[0]


def test_a_trl_alias_and_its_mmrl_key_override_each_other_across_sources(tmp_path):
    cfg = load_config(TINY, ["rollout.num_generations=8", "algorithm.loss_type=grpo", "optimizer.learning_rate=1e-5"])
    assert (cfg.rollout.group_size, cfg.algorithm.loss_aggregation, cfg.optimizer.lr) == (8, "grpo", 1e-5)
    # TRL's batch is counted in the overriding num_generations: 16 completions / 8 = 2 prompts
    assert (
        load_config(
            TINY, ["rollout.num_generations=8", "trainer.per_device_train_batch_size=16"]
        ).trainer.prompts_per_step
        == 2
    )
    # the other way round: the YAML's alias gives way to the command line's mmrl key
    (tmp_path / "trl.yaml").write_text(
        f"extends: {os.path.abspath(TINY)}\noptimizer:\n  learning_rate: 3.0e-5\nrollout:\n  num_generations: 2\n"
    )
    assert load_config(tmp_path / "trl.yaml").optimizer.lr == 3e-5  # the child's alias beats the base's lr
    cfg = load_config(tmp_path / "trl.yaml", ["optimizer.lr=2e-5", "rollout.group_size=6"])
    assert (cfg.optimizer.lr, cfg.rollout.group_size) == (2e-5, 6)
    # both names in one source: which one is meant is unclear
    with pytest.raises(ConfigError, match=r"^command line: optimizer.learning_rate and optimizer.lr \(command line\)"):
        load_config(TINY, ["optimizer.learning_rate=1e-5", "optimizer.lr=2e-5"])
    (tmp_path / "both.yaml").write_text("rollout:\n  num_generations: 2\n  group_size: 4\n")
    with pytest.raises(ConfigError, match=r"both.yaml: rollout.num_generations and rollout.group_size"):
        load_config(tmp_path / "both.yaml")
    assert load_config(tmp_path / "both.yaml", ["rollout.group_size=8"]).rollout.group_size == 8  # settled by it


def test_config_show_prints_the_overriding_alias_value(capsys):
    assert main(["config", "show", TINY, "rollout.num_generations=8"]) == 0
    assert "  group_size: 8\n" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["train", "sft"])
def test_a_top_level_output_dir_on_train_or_sft_is_refused_not_ignored(tmp_path, capsys, command):
    code = main([command, TINY, f"output_dir={tmp_path / 'x'}", "model.name_or_path=/no/such/model"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0] == (
        f"mmrl {command}: error: command line: output_dir is `mmrl pipeline`'s folder; for mmrl "
        f"{command} use trainer.output_dir={tmp_path / 'x'}"
    )
    assert not (tmp_path / "x").exists()
