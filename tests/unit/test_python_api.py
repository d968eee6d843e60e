"""The TRL-shaped Python API: settings map onto the config tree, in-memory data and rewards become ordinary run
inputs, a loaded model is trained in place, and a per-item reward is a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmrl import GRPOConfig, GRPOTrainer
from mmrl.api import registered
from mmrl.cli import main
from mmrl.data.dataset import load_samples
from mmrl.errors import UserError
from mmrl.rewards import list_rewards
from mmrl.rewards.composite import RewardComposite

SMALL = {"max_steps": 1, "num_generations": 2, "max_completion_length": 8, "prompts_per_step": 2,
         "data": {"min_pixels": 3136, "max_pixels": 3136}}


def _records(n=4):
    colors = ["red", "green", "blue", "yellow"]
    return [{"prompt": "What color is the image?", "answer": colors[i % 4], "task": "text",
             "images": [Image.new("RGB", (56, 56), colors[i % 4])]} for i in range(n)]


def test_config_names_map_onto_the_tree():
    cfg = GRPOConfig(learning_rate=3e-5, num_generations=4, output_dir="runs/x", prompts_per_step=3,
                     trainer={"seed": 7}, beta=0.01)
    assert (cfg.optimizer.lr, cfg.rollout.group_size, cfg.trainer.output_dir, cfg.trainer.prompts_per_step,
            cfg.trainer.seed, cfg.algorithm.beta) == (3e-5, 4, "runs/x", 3, 7, 0.01)
    with pytest.raises(UserError, match="did you mean 'num_generations'"):
        GRPOConfig(num_generation=4)
    with pytest.raises(UserError, match="ambiguous"):
        GRPOConfig(batch_size=1)  # trainer.batch_size and eval.batch_size


def test_hf_dataset_and_dicts_become_one_cached_jsonl(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list(_records())
    a = GRPOTrainer(model="tiny", reward_funcs=["accuracy"], train_dataset=ds, args=GRPOConfig(**SMALL))
    b = GRPOTrainer(model="tiny", reward_funcs=["accuracy"], train_dataset=_records(), args=GRPOConfig(**SMALL))
    path = a.args.data.train[0].path
    assert path == b.args.data.train[0].path  # same content, same file
    samples = load_samples(path)
    assert [s.answer for s in samples] == ["red", "green", "blue", "yellow"]
    with Image.open(samples[2].images[0]) as im:
        assert im.getpixel((0, 0)) == (0, 0, 255)
    with pytest.raises(UserError, match=r"train_dataset\[1\]: each record must be a dict"):
        GRPOTrainer(model="tiny", train_dataset=[{"prompt": "q", "answer": "a"}, "oops"])


def test_unknown_reward_name_and_per_item_reward_are_clear_errors():
    with pytest.raises(UserError, match="Did you mean 'accuracy'"):
        GRPOTrainer(model="tiny", reward_funcs=["acuracy"])

    def per_item(completion, answer=None, **_):
        return 1.0

    trainer = GRPOTrainer(model="tiny", reward_funcs=[per_item])
    with registered(trainer.reward_callables):
        with RewardComposite([s.model_dump() for s in trainer.args.rewards], workers=0) as composite:
            with pytest.raises(UserError, match="returns a single value per call.*batched"):
                composite.score(["a", "b"], {"answer": ["1", "2"]})
    assert "per_item" not in list_rewards()  # known only while a run uses it


def test_a_python_reward_with_asynchronous_rollouts_is_refused_before_anything_loads(tmp_path):
    """The worker process builds its rewards by name: a function registered in this process failed there, after
    the model had loaded, as an 'unknown reward'."""

    def scores(completions, **_):
        return [float(len(c)) for c in completions]

    args = GRPOConfig(**{**SMALL, "rollout.max_staleness": 1, "output_dir": str(tmp_path / "run")})
    with pytest.raises(UserError, match="rollout.max_staleness=1.*cannot call the Python reward function.*scores.*"
                                        "file.py:function") as err:
        GRPOTrainer(model="tiny", reward_funcs=["format", scores], train_dataset=_records(), args=args)
    assert "\n" not in str(err.value) and not (tmp_path / "run").exists()
    GRPOTrainer(model="tiny", reward_funcs=["format"], train_dataset=_records(), args=args)  # names are fine


def test_per_item_file_reward_fails_the_cli_with_exit_2(tmp_path, capsys):
    (tmp_path / "r.py").write_text("def score(completion, answer=None, **_):\n    return 1.0\n")
    (tmp_path / "c.jsonl").write_text(json.dumps({"completion": "x", "answer": "1"}) + "\n")
    assert main(["reward", "score", "--reward", f"{tmp_path / 'r.py'}:score", "--input", str(tmp_path / "c.jsonl")]) == 2
    assert "returns a single value per call" in capsys.readouterr().err


def test_loaded_model_is_trained_in_place(tiny_model_dir, tmp_path):
    from transformers import AutoModelForImageTextToText

    from mmrl.models.processor import load_processor

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def length_spread(completions, **_):  # a reward with spread, so the update moves the weights
        return [float(len(c)) for c in completions]

    args = GRPOConfig(**{**SMALL, "num_generations": 4}, output_dir=str(tmp_path / "run"), learning_rate=1e-2)
    trainer = GRPOTrainer(model=model, processing_class=load_processor(tiny_model_dir),
                          reward_funcs=[length_spread], train_dataset=_records(), args=args)
    out = trainer.train()
    assert out.run_dir == tmp_path / "run" and Path(out) == tmp_path / "run" == out  # path-like, as the path it was
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed  # the caller's object holds the trained weights
    with pytest.raises(UserError, match="needs its processor"):
        GRPOTrainer(model=model, reward_funcs=["format"])


def test_train_shows_no_library_progress_bars(tmp_path, capsys):
    # Review: the README's Python example printed transformers' "Loading weights" and "Writing model shards" bars.
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()  # as in a fresh user process (other tests may have run the CLI, which disables them)
    try:
        args = GRPOConfig("configs/tests/grpo_tiny.yaml", **{**SMALL, "output_dir": str(tmp_path / "run")})
        GRPOTrainer(model="tiny", reward_funcs=["format"], train_dataset=_records(), args=args).train()
        assert hf_logging.is_progress_bar_enabled()  # the user's setting is given back
    finally:
        hf_logging.disable_progress_bar()
    err = capsys.readouterr().err
    assert "Loading weights" not in err and "Writing model shards" not in err, err[-500:]
