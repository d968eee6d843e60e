"""TRL habits: GRPOConfig's names map onto mmrl's settings where the meaning is the same (checked against TRL's own
GRPOConfig), the others are refused together with the mmrl name to use, in Python and in YAML/command lines; a TRL
dataset's `solution` column reaches a TRL reward under its own name; `train()` returns TRL's TrainOutput fields."""

from __future__ import annotations

import dataclasses
import math
import os

import pytest
from PIL import Image

from mmrl import GRPOConfig, GRPOTrainer
from mmrl.api import registered
from mmrl.config import load_config, trl_names
from mmrl.data.checks import check_for_training
from mmrl.data.dataset import load_samples
from mmrl.errors import ConfigError, UserError
from mmrl.rewards.composite import RewardComposite
from mmrl.rewards.gold_check import gold_check

# What a TRL GRPO script passes (TRL's docs and examples): every one of these is accepted.
TRL_SCRIPT = dict(output_dir="runs/trl", per_device_train_batch_size=4, gradient_accumulation_steps=2,
                  num_generations=4, learning_rate=1e-5, max_completion_length=64, logging_steps=5, bf16=False,
                  report_to="none", beta=0.04, epsilon=0.1, temperature=0.9, num_train_epochs=2, seed=1,
                  max_grad_norm=0.5, warmup_steps=0.1, lr_scheduler_type="cosine", loss_type="dr_grpo")


def test_every_name_is_trls_and_a_trl_script_maps_onto_the_tree(monkeypatch):
    trl = pytest.importorskip("trl.trainer.grpo_config")
    fields = {f.name for f in dataclasses.fields(trl.GRPOConfig)}
    ours = {*trl_names.SAME, *trl_names.REFUSED, *trl_names.BATCH, *trl_names.ADAM_BETAS, *trl_names.NO_EFFECT}
    assert ours <= fields, ours - fields  # no invented TRL names
    trl.GRPOConfig(**{**TRL_SCRIPT, "output_dir": None}, use_cpu=True)  # and the script is one TRL accepts
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = GRPOConfig(**TRL_SCRIPT)
    assert (cfg.trainer.output_dir, cfg.rollout.group_size, cfg.optimizer.lr, cfg.rollout.max_completion_length,
            cfg.model.dtype, cfg.trainer.report_to, cfg.algorithm.beta, cfg.rollout.temperature,
            cfg.trainer.num_epochs, cfg.trainer.seed, cfg.optimizer.max_grad_norm, cfg.optimizer.warmup_ratio,
            cfg.optimizer.schedule, cfg.algorithm.loss_aggregation) == (
        "runs/trl", 4, 1e-5, 64, "fp32", [], 0.04, 0.9, 2, 1, 0.5, 0.1, "cosine", "dr_grpo")
    # TRL's epsilon_high defaults to epsilon; 4 completions x 1 process x 2 accumulation / 4 generations = 2 prompts
    assert (cfg.algorithm.eps_low, cfg.algorithm.eps_high, cfg.trainer.prompts_per_step) == (0.1, 0.1, 2)
    monkeypatch.setenv("WORLD_SIZE", "2")  # per device: twice the processes, twice the prompts
    assert GRPOConfig(**TRL_SCRIPT).trainer.prompts_per_step == 4
    assert GRPOConfig(bf16=True, max_grad_norm=0, max_steps=-1).model_dump()["optimizer"]["max_grad_norm"] is None
    assert GRPOConfig(bf16=True).model.dtype == "bf16" and GRPOConfig(max_steps=3, num_train_epochs=2).trainer.num_epochs is None


def test_names_without_an_mmrl_meaning_are_refused_together_with_the_mmrl_name():
    with pytest.raises(UserError) as err:
        GRPOConfig(fp16=True, steps_per_generation=2, min_p=0.1, num_generations=3, per_device_train_batch_size=4,
                   learning_rat=1e-5)
    message = str(err.value)
    assert "\n" not in message
    for part in ("fp16=True", "model.dtype", "steps_per_generation", "algorithm.mini_batches", "min_p",
                 "not a multiple of num_generations=3", "did you mean 'learning_rate'"):
        assert part in message, (part, message)
    with pytest.raises(UserError, match="optimizer.lr is set twice"):
        GRPOConfig(learning_rate=1e-5, lr=1e-5)
    with pytest.raises(UserError, match="counts rollout steps"):
        GRPOConfig(num_iterations=2, max_steps=10)  # TRL's steps are optimizer steps: 2 per rollout here
    with pytest.raises(UserError, match="mmrl has no 'all'"):
        GRPOConfig(report_to="all")


def test_yaml_and_command_line_take_trl_names_in_their_section_and_hint_the_mmrl_name(tmp_path):
    cfg = load_config(None, ["optimizer.learning_rate=1e-5", "rollout.num_generations=4", "model.bf16=true",
                             "trainer.per_device_train_batch_size=8", "trainer.report_to=none"])
    assert (cfg.optimizer.lr, cfg.rollout.group_size, cfg.model.dtype, cfg.trainer.prompts_per_step,
            cfg.trainer.report_to) == (1e-5, 4, "bf16", 2, [])
    (tmp_path / "run.yaml").write_text("algorithm:\n  epsilon: 0.1\noptimizer:\n  learning_rate: 2.0e-5\n")
    cfg = load_config(tmp_path / "run.yaml")
    assert (cfg.algorithm.eps_low, cfg.algorithm.eps_high, cfg.optimizer.lr) == (0.1, 0.1, 2e-5)
    with pytest.raises(ConfigError, match=r"unknown key 'trainer.learning_rate': TRL's 'learning_rate' is 'optimizer.lr'"):
        load_config(None, ["trainer.learning_rate=1e-5"])  # was "did you mean ... warmup_ratio"
    with pytest.raises(ConfigError, match=r"'learning_rate': TRL's 'learning_rate' is 'optimizer.lr'"):
        load_config(None, ["learning_rate=1e-5"])
    with pytest.raises(ConfigError, match=r"steps_per_generation.*algorithm.mini_batches"):
        load_config(None, ["trainer.steps_per_generation=2"])
    # TRL's own default (eps_high = epsilon) gives way to an explicit mmrl value; a batch given twice is refused
    assert load_config(None, ["algorithm.epsilon=0.1", "algorithm.eps_high=0.3"]).algorithm.eps_high == 0.3
    assert GRPOConfig(epsilon=0.1, algorithm={"eps_high": 0.3}).algorithm.eps_high == 0.3
    with pytest.raises(ConfigError, match=r"trainer.per_device_train_batch_size and trainer.prompts_per_step"):
        load_config(None, ["trainer.per_device_train_batch_size=8", "trainer.prompts_per_step=3"])
    with pytest.raises(ConfigError, match=r"run.yaml: optimizer.learning_rate and optimizer.lr"):
        (tmp_path / "run.yaml").write_text("optimizer:\n  learning_rate: 2.0e-5\n  lr: 1.0e-5\n")
        load_config(tmp_path / "run.yaml")


def _trl_records():
    colors = ["red", "green", "blue", "yellow"]
    return [{"prompt": "What color is the image?", "solution": c, "image": Image.new("RGB", (56, 56), c)}
            for c in colors]


def test_trl_solution_column_reaches_a_trl_reward_and_train_returns_trl_fields(tmp_path):
    import datasets

    seen = []

    def accuracy_reward(completions, solution, **kwargs):  # TRL's reward signature
        seen.extend(solution)
        return [float(c.strip().lower() == s) for c, s in zip(completions, solution)]

    args = GRPOConfig(output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, num_generations=2,
                      num_train_epochs=1, max_completion_length=8, report_to="none", logging_steps=1,
                      data={"min_pixels": 3136, "max_pixels": 3136})
    trainer = GRPOTrainer(model="tiny", reward_funcs=[accuracy_reward], train_dataset=datasets.Dataset.from_list(
        _trl_records()), args=args)
    samples = load_samples(trainer.args.data.train[0].path)
    assert [(s.answer, s.reward_columns()["solution"]) for s in samples][:2] == [("red", "red"), ("green", "green")]
    with registered(trainer.reward_callables):  # the gold check that named the cache file before
        check_for_training(samples, trainer.args.data, gold_check(trainer.args.rewards))
        with RewardComposite([s.model_dump() for s in trainer.args.rewards], workers=0) as composite:
            assert composite.score(["red"], {"solution": ["red"], "answer": ["red"]}).total == [1.0]
    out = trainer.train()
    assert out.global_step == 2  # one epoch of 4 prompts, 2 per step (4 completions / 2 generations)
    assert math.isfinite(out.training_loss) and out.metrics["train_loss"] == out.training_loss
    assert "reward/total" in out.metrics and out.metrics["train_runtime"] > 0
    assert os.fspath(out) == str(tmp_path / "run") and (out / "metrics.jsonl").is_file()
    assert set(seen) == {"red", "green", "blue", "yellow"}


def test_in_memory_record_errors_name_the_record_not_the_cache_file(tmp_path):
    def needs_gold(completions, solution, **_):
        return [None for _ in completions]  # cannot score any gold: refused before training

    args = GRPOConfig(output_dir=str(tmp_path / "run"), max_steps=1, num_generations=2)
    trainer = GRPOTrainer(model="tiny", reward_funcs=[needs_gold], train_dataset=_trl_records(), args=args)
    with pytest.raises(UserError, match=r"^train_dataset\[0\]: ") as err:
        trainer.train()
    assert "data.jsonl" not in str(err.value)


def test_a_files_own_columns_reach_rewards_unless_a_reward_argument_has_their_name(tmp_path):
    import json

    (tmp_path / "trl.jsonl").write_text(json.dumps(
        {"prompt": [{"role": "user", "content": "2 + 2?"}], "solution": "<answer>4</answer>", "difficulty": 2,
         "tags": ["sums"]}) + "\n")
    (sample,) = load_samples(str(tmp_path / "trl.jsonl"))
    columns = sample.reward_columns()
    assert (sample.answer, columns["solution"], columns["difficulty"]) == ("4", "<answer>4</answer>", 2)
    assert "tags" not in columns  # the accuracy reward's own `tags` argument would get the column
