"""The synthetic GUI task: records the native reader takes, golds the `gui_action` reward scores as UI-R1 does."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from PIL import Image

from data_pipelines.synthetic import build_synthetic
from data_pipelines.synthetic.gui import ACTIONS
from mmrl.cli import main
from mmrl.data.dataset import load_samples
from mmrl.errors import UserError
from mmrl.rewards.gui import gui_action_reward


def _columns(samples):
    keys = ("answer", "id", "image_size", "input_size", "box_frame", "box_format")
    return {k: [s.reward_columns()[k] for s in samples] for k in keys}


def test_every_action_kind_and_golds_inside_the_screen(tmp_path):
    path = build_synthetic(["gui"], 40, 0, tmp_path, image_size=112, split="train")
    samples = load_samples(str(path))
    assert len(samples) == 40 and all(s.task == "gui" and s.meta["format"] == "mmrl" for s in samples)
    kinds = Counter(s.answer["action_type"] for s in samples)
    assert set(kinds) == set(ACTIONS) and kinds["click"] == 20  # every other item is a click
    for s in samples:
        with Image.open(s.images[0]) as im:
            assert im.size == (112, 112) == s.image_size
        if s.answer["action_type"] == "click":
            x1, y1, x2, y2 = s.answer["bbox"]
            px, py = s.meta["point"]
            assert 0 <= x1 < px < x2 < 112 and 0 <= y1 < py < y2 < 112
            label = s.meta["instruction"].split("'")[1]
            assert [b["bbox"] for b in s.meta["layout"]["buttons"] if b["label"] == label] == [s.answer["bbox"]]


def test_gui_action_reward_scores_the_targets_and_penalises_wrong_parts(tmp_path):
    samples = load_samples(str(build_synthetic(["gui"], 10, 3, tmp_path, image_size=112)))
    targets = [s.response for s in samples]
    assert gui_action_reward(targets, **_columns(samples)) == [3.0] * len(samples)
    wrong = []
    for s in samples:  # right action type, wrong target: a click far outside the box, another word / app / direction
        kind = s.answer["action_type"]
        pred = {"click": {"action": "click", "coordinate": [0, 111]}, "input_text": {"action": "input_text", "text": "zzz"},
                "scroll": {"action": "scroll", "direction": "sideways"}, "navigate_back": {"action": "open_app",
                "app_name": "camera"}, "open_app": {"action": "open_app", "app_name": "nothing"}}[kind]
        wrong.append(f"<think> x </think><answer> {[pred]} </answer>")
    scores = gui_action_reward(wrong, **_columns(samples))
    expected = [1.0 if s.answer["action_type"] == "navigate_back" else 2.0 for s in samples]
    assert scores == expected


def test_cli_gui_split_and_mixing_rejected(tmp_path, capsys):
    out = tmp_path / "gui"
    assert main(["build-data", "synthetic", "--tasks", "gui", "--n", "6", "--eval-n", "3", "--out", str(out)]) == 0
    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    held = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert len(train) == 6 and len(held) == 3
    assert not {r["id"] for r in train} & {r["id"] for r in held}
    assert all((out / r["images"][0]).is_file() for r in train + held)
    with pytest.raises(UserError, match="build it alone"):
        build_synthetic(["gui", "color"], 2, 0, tmp_path / "mixed")
    assert main(["build-data", "synthetic", "--tasks", "color", "--n", "2", "--eval-n", "2", "--eval-seed", "0",
                 "--out", str(tmp_path / "x")]) == 2
    assert "--eval-seed must differ" in capsys.readouterr().err
