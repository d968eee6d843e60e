"""The Python API page's example (TRL-style) and the rewards page's "Your own reward" snippets run as written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from tests.doc_blocks import block

ROOT = Path(__file__).resolve().parents[2]


def test_python_example_trains_with_a_callable_reward(tmp_path, monkeypatch, capsys):
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    exec(compile(block("docs/python-api.md", "Python API", "python"), "docs/python-api.md", "exec"),
         {"__name__": "readme"})
    run = tmp_path / "runs/python_api"
    printed = capsys.readouterr().out.splitlines()[-1].split()  # the example's print, after the run's log lines
    assert printed[:2] == [str(run.relative_to(tmp_path)), "2"]  # the TrainOutput: run_dir and global_step
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all("reward/says_the_color" in r for r in rows)  # the callable ran as a named component
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert [r["name"] for r in saved["rewards"]] == ["says_the_color", "format"]
    assert saved["trainer"]["max_steps"] == 2 and saved["model"]["name_or_path"] == "tiny"


def test_own_reward_snippets_score_as_the_yaml_says(tmp_path, monkeypatch):
    from mmrl.rewards.composite import RewardComposite

    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_rewards.py").write_text(block("docs/rewards.md", "Your own reward", "python"))
    specs = yaml.safe_load(block("docs/rewards.md", "Your own reward", "yaml"))["rewards"]
    with RewardComposite(specs, workers=0) as composite:
        result = composite.score(["<think>x</think><answer>3</answer>", "no idea"], {"answer": ["3", "3"]})
    right, wrong = result.components["my_rewards.py:short_and_right"]
    assert right > 0.9 and wrong < 0  # right answer scores ~1 minus a length cost, a wrong one only the cost
    assert result.components["format"] == [1.0, 0.0]
    # Review: the README's example was `str(a) in c`, paid for by an answer that lists every candidate
    with RewardComposite(specs, workers=0) as composite:
        hacks = ["<think>x</think><answer>1 2 3 4 5</answer>", "<answer>13</answer>", "<answer>4</answer> 3",
                 "<think>x</think><answer>3</answer><answer>4</answer>"]
        scores = composite.score(hacks, {"answer": ["3"] * 4}).components["my_rewards.py:short_and_right"]
        assert all(score < 0 for score in scores), scores
        assert composite.score(["<answer>3</answer>"], {"answer": [None]}).components[
            "my_rewards.py:short_and_right"] == [None]  # no gold: unscorable, not a made-up 0
