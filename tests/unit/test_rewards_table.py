"""Hand-computed reward cases across all families, plus the TRL and Math-Verify cases (copied into tests/fixtures)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmrl.rewards import get_reward
from mmrl.rewards.accuracy import verify_math

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "rewards"
T = "<think>r</think>"
CLICK = {"action_type": "click", "bbox": [100, 100, 200, 200]}
BIG = "123456789012345678901234567890"

# (reward, completion, columns of the one sample, kwargs, expected)
CASES = [
    # --- format (strict R1) and format_lenient
    ("format", f"{T}<answer>4</answer>", {}, {}, 1.0),
    ("format", f"  {T}\n\n<answer>4</answer>\n", {}, {}, 1.0),
    ("format", f"{T}<answer>4</answer> trailing", {}, {}, 0.0),
    ("format", f"{T}<answer>4</answer><answer>5</answer>", {}, {}, 0.0),  # two answer tags
    ("format", f"{T}<answer> </answer>", {}, {}, 0.0),  # empty answer
    ("format", "<answer>4</answer>", {}, {}, 0.0),
    ("format", f"{T}{T}<answer>4</answer>", {}, {}, 0.0),
    ("format", "pre <think>r</think><answer>4</answer>", {}, {}, 0.0),
    ("format_lenient", f"{T}The answer is 4", {}, {}, 1.0),
    ("format_lenient", "r</think>4", {}, {}, 0.0),
    # --- accuracy: math
    ("accuracy", f"{T}<answer>\\frac{{1}}{{2}}</answer>", {"answer": "0.5", "task": "math"}, {}, 1.0),
    ("accuracy", f"{T}<answer>0.5</answer>", {"answer": "\\dfrac{1}{2}", "task": "math"}, {}, 1.0),  # bare LaTeX gold
    ("accuracy", f"{T}<answer>2</answer>", {"answer": "0.5", "task": "math"}, {}, 0.0),
    ("accuracy", f"{T}<answer></answer>", {"answer": "2", "task": "math"}, {}, 0.0),  # empty answer
    ("accuracy", "<think>the answer is <answer>2</answer></think>", {"answer": "2", "task": "math"}, {}, 0.0),
    ("accuracy", "<think>so \\boxed{2}</think> done", {"answer": "2", "task": "math"}, {}, 0.0),  # only in think
    ("accuracy", f"{T}<answer>1</answer><answer>2</answer>", {"answer": "2", "task": "math"}, {}, 0.0),  # two blocks: none
    ("accuracy", f"{T}<answer>2</answer>", {"answer": "two and a half", "task": "math"}, {}, None),  # unparsable gold
    ("accuracy", f"{T}<answer>2</answer>", {"answer": "", "task": "math"}, {}, None),  # empty gold
    ("accuracy", f"{T}The result is \\boxed{{12}}.", {"answer": "12", "task": "math"}, {}, 1.0),
    ("accuracy", f"{T}The result is \\boxed{{12}}.", {"answer": "12", "task": "math"}, {"allow_boxed": False}, 0.0),
    ("accuracy", f"{T}<answer>3x + 4y + 14 = 0</answer>", {"answer": "3*x-1*y+13=0", "task": "math"}, {}, 0.0),
    # --- accuracy: mc
    ("accuracy", f"{T}<answer>B</answer>", {"answer": "B", "task": "mc"}, {}, 1.0),
    ("accuracy", f"{T}<answer>(B) dog</answer>", {"answer": "B", "task": "mc", "choices": ["cat", "dog"]}, {}, 1.0),
    ("accuracy", f"{T}<answer>(A) dog</answer>", {"answer": "B", "task": "mc", "choices": ["cat", "dog"]}, {}, 0.0),
    ("accuracy", f"{T}<answer>dog</answer>", {"answer": "B", "task": "mc", "choices": ["cat", "dog"]}, {}, 1.0),
    ("accuracy", f"{T}<answer>A, B</answer>", {"answer": "B", "task": "mc"}, {}, 0.0),  # more letters than gold
    ("accuracy", f"{T}<answer>A</answer>", {"answer": "AC", "task": "mc"}, {}, 0.0),  # fewer letters than gold
    ("accuracy", f"{T}<answer>C and A</answer>", {"answer": ["A", "C"], "task": "mc"}, {}, 1.0),
    ("accuracy", f"{T}<answer>\\boxed{{D}}</answer>", {"answer": "D", "task": "mc"}, {}, 1.0),
    ("accuracy", f"{T}<answer>I think B</answer>", {"answer": "B", "task": "mc"}, {}, 0.0),
    ("accuracy", f"{T}<answer>B</answer>", {"answer": "the cat", "task": "mc", "choices": ["dog", "cow"]}, {}, None),
    # --- accuracy: yes_no
    ("accuracy", f"{T}<answer>Yes.</answer>", {"answer": "yes", "task": "yes_no"}, {}, 1.0),
    ("accuracy", f"{T}<answer>True</answer>", {"answer": "Yes", "task": "yes_no"}, {}, 1.0),
    ("accuracy", f"{T}<answer>incorrect</answer>", {"answer": "no", "task": "yes_no"}, {}, 1.0),
    ("accuracy", f"{T}<answer>yes or no</answer>", {"answer": "yes", "task": "yes_no"}, {}, 0.0),  # hedge
    ("accuracy", f"{T}<answer>no, not true</answer>", {"answer": "no", "task": "yes_no"}, {}, 1.0),
    ("accuracy", f"{T}<answer>yes</answer>", {"answer": "maybe", "task": "yes_no"}, {}, None),
    # --- accuracy: count
    ("accuracy", f"{T}<answer>3</answer>", {"answer": 3, "task": "count"}, {}, 1.0),
    ("accuracy", f"{T}<answer>three</answer>", {"answer": "3", "task": "count"}, {}, 1.0),
    ("accuracy", f"{T}<answer>There are twenty-one cubes</answer>", {"answer": 21, "task": "count"}, {}, 1.0),
    ("accuracy", f"{T}<answer>3 or 4</answer>", {"answer": 3, "task": "count"}, {}, 0.0),
    ("accuracy", f"{T}<answer>3.5</answer>", {"answer": 3, "task": "count"}, {}, 0.0),
    ("accuracy", f"{T}<answer>3</answer>", {"answer": "several", "task": "count"}, {}, None),
    # --- accuracy: number (huge numbers, precision, unit)
    ("accuracy", f"{T}<answer>{BIG[:-1]}1</answer>", {"answer": BIG, "task": "number"}, {}, 0.0),
    ("accuracy", f"{T}<answer>{BIG}</answer>", {"answer": BIG, "task": "number"}, {}, 1.0),
    ("accuracy", f"{T}<answer>1e400</answer>", {"answer": "1e400", "task": "number"}, {}, 1.0),
    ("accuracy", f"{T}<answer>3.14159</answer>", {"answer": "3.14", "task": "number", "precision": 2}, {}, 1.0),
    ("accuracy", f"{T}<answer>3.149</answer>", {"answer": "3.14", "task": "number", "precision": 2}, {}, 0.0),
    ("accuracy", f"{T}<answer>12 cm</answer>", {"answer": "12", "task": "number", "unit": "cm"}, {}, 1.0),
    ("accuracy", f"{T}<answer>1,234.5</answer>", {"answer": 1234.5, "task": "number"}, {}, 1.0),
    # --- accuracy: text
    ("accuracy", f"{T}<answer>The Eiffel Tower!</answer>", {"answer": "eiffel tower", "task": "text"}, {}, 1.0),
    ("accuracy", f"{T}<answer>tower</answer>", {"answer": "eiffel tower", "task": "text"}, {}, 0.0),
    # --- hard_format_accuracy
    ("hard_format_accuracy", f"{T}<answer>7</answer>", {"answer": "7", "task": "count"}, {}, 1.0),
    ("hard_format_accuracy", "<answer>7</answer>", {"answer": "7", "task": "count"}, {}, 0.0),
    ("hard_format_accuracy", f"{T}<answer>8</answer>", {"answer": "7", "task": "count"}, {}, 0.0),
    # --- iou / giou / iou_threshold / multi_box_iou (boxes, frames)
    ("iou", "<answer>[0, 0, 10, 10]</answer>", {"answer": [0, 0, 10, 20], "image_size": (100, 100)}, {}, 0.5),
    ("iou", "<answer>[0, 0, 50, 50]</answer>",  # other frame: model input is half the original size
     {"answer": [0, 0, 100, 100], "image_size": (200, 200), "input_size": (100, 100)}, {}, 1.0),
    ("iou", "<answer>[0, 0, 100, 100]</answer>",  # same numbers read in the input frame are twice as large
     {"answer": [0, 0, 100, 100], "image_size": (200, 200), "input_size": (100, 100)}, {}, 0.25),
    ("iou", "<answer>[0, 0, 500, 500]</answer>",
     {"answer": [0, 0, 100, 100], "image_size": (200, 200), "input_size": (100, 100)}, {"pred_frame": "norm1000"}, 1.0),
    ("iou", "<answer>[0, 0, 10, 10]</answer>", {"answer": [0, 0, 10, 10], "box_format": "xywh"}, {}, 1.0),
    ("iou", "<answer>[300, 300, 400, 400]</answer>", {"answer": [0, 0, 10, 10], "image_size": (100, 100)}, {}, 0.0),
    ("iou", "<answer>[0, 0, 10]</answer>", {"answer": [0, 0, 10, 10]}, {}, 0.0),  # wrong arity
    ("iou", "<answer>[10, 0, 0, 10]</answer>", {"answer": [0, 0, 10, 10]}, {}, 0.0),  # x2 < x1
    ("iou", "<answer>[nan, 0, 10, 10]</answer>", {"answer": [0, 0, 10, 10]}, {}, 0.0),
    ("iou", "<answer>the top left corner</answer>", {"answer": [0, 0, 10, 10]}, {}, 0.0),
    ("iou", "<answer>[0, 0, 10, 10]</answer>", {"answer": "no box"}, {}, None),
    ("iou", "<answer>(0,0),(10,10)</answer>", {"answer": [0, 0, 10, 10]}, {}, 1.0),
    ("giou", "<answer>[30, 0, 40, 10]</answer>", {"answer": [0, 0, 10, 10]}, {}, 0.25),
    ("giou", "<answer>[30, 0, 40, 10]</answer>", {"answer": [0, 0, 10, 10]}, {"raw": True}, -0.5),
    ("iou_threshold", "<answer>[0, 0, 10, 10]</answer>", {"answer": [0, 0, 10, 19]}, {}, 1.0),
    ("iou_threshold", "<answer>[0, 0, 10, 10]</answer>", {"answer": [0, 0, 10, 20]}, {}, 0.0),  # IoU 0.5 is not > 0.5
    ("multi_box_iou", '<answer>[{"Position": [0, 0, 10, 10], "Confidence": 0.9}]</answer>',
     {"answer": [[0, 0, 10, 10], [50, 50, 60, 60]]}, {}, 0.5),
    ("multi_box_iou", "<answer>[[0, 0, 10, 10], [50, 50, 60, 60]]</answer>",
     {"answer": [[50, 50, 60, 60], [0, 0, 10, 10]]}, {}, 1.0),
    # --- gui_action (UI-R1) and point_in_box
    ("gui_action", f"{T}<answer>[{{'action': 'click', 'coordinate': [150, 150]}}]</answer>", {"answer": CLICK}, {}, 3.0),
    ("gui_action", f"{T}<answer>[{{'action': 'click', 'coordinate': [200, 100]}}]</answer>", {"answer": CLICK}, {}, 3.0),
    ("gui_action", f"{T}<answer>[{{'action': 'click', 'coordinate': [201, 150]}}]</answer>", {"answer": CLICK}, {}, 2.0),
    ("gui_action", "<answer>[{'action': 'click', 'coordinate': [150, 150]}]</answer>", {"answer": CLICK}, {}, 2.0),
    ("gui_action", f"{T}<answer>[{{'action': 'click', 'coordinate': [75, 75]}}]</answer>",
     {"answer": CLICK, "image_size": (400, 400), "input_size": (200, 200)}, {}, 3.0),
    ("gui_action", f"{T}<answer>[{{'action': 'scroll', 'direction': 'up'}}]</answer>",
     {"answer": {"action_type": "scroll", "direction": "down"}}, {}, 2.0),
    ("gui_action", f"{T}<answer>{{\"action\": \"open_app\", \"app_name\": \"PocketBook\"}}</answer>",
     {"answer": {"action_type": "open_app", "app_name": "pocketbook"}}, {}, 3.0),
    ("gui_action", f"{T}<answer>[{{'action': 'navigate_back'}}]</answer>", {"answer": CLICK}, {}, 1.0),
    ("point_in_box", "<answer>(965, 2105)</answer>", {"answer": [965, 2105, 1110, 2258]}, {}, 1.0),
    ("point_in_box", "<answer>[100, 100]</answer>", {"answer": [0, 0, 50, 50], "box_format": "xywh"}, {}, 0.0),
    # --- length shaping
    ("overlong", "x", {"completion_length": 100}, {"max_length": 128, "buffer": 28}, 0.0),
    ("overlong", "x", {"completion_length": 114}, {"max_length": 128, "buffer": 28}, -0.5),
    ("overlong", "x", {"completion_length": 129}, {"max_length": 128, "buffer": 28, "factor": 2.0}, -2.0),
    ("cosine_length", "<answer>2</answer>", {"answer": "2", "task": "count", "completion_length": 500}, {}, 0.75),
    ("repetition_penalty", "a a a a", {}, {"ngram_size": 2}, -2 / 3),
    # --- Curr-ReFT stages
    ("curr_reft_judge", f"{T}<answer>false</answer>", {"answer": "no"}, {}, 1.0),
    ("curr_reft_judge", f"{T}<answer></answer>", {"answer": "yes"}, {}, 0.0),  # no substring fallback
    ("curr_reft_choice", f"{T}<answer>B, E</answer>", {"answer": "BE"}, {}, 1.0),
    ("curr_reft_choice", f"{T}<answer>B</answer>", {"answer": "BE"}, {}, 0.0),
    ("curr_reft_open", f"{T}<answer></answer>", {"answer": "cat", "task": "classification"}, {}, 0.0),
    ("curr_reft_open", f"{T}<answer>[0, 0, 10, 10]</answer>", {"answer": [0, 0, 10, 12], "task": "detection"}, {}, 1.0),
    ("curr_reft_open", f"{T}<answer>2/4</answer>", {"answer": "\\frac{1}{2}", "task": "math"}, {}, 1.0),
]


@pytest.mark.parametrize("name,completion,row,kwargs,expected", CASES)
def test_hand_computed_case(name, completion, row, kwargs, expected):
    got = get_reward(name)([completion], **{k: [v] for k, v in row.items()}, **kwargs)
    assert len(got) == 1
    if expected is None:
        assert got[0] is None
    else:
        assert got[0] == pytest.approx(expected)


def test_table_is_large_and_covers_every_reward():
    from mmrl.rewards import list_rewards

    assert len(CASES) >= 60
    assert {c[0] for c in CASES} == set(list_rewards())


def _content(completion):
    return completion[0]["content"] if isinstance(completion, list) else completion


def test_trl_think_format_cases_hold_for_format_lenient():
    tests = json.loads((FIX / "trl_reward_test_cases.json").read_text())["tests"]
    lenient, strict = get_reward("format_lenient"), get_reward("format")
    format_tests = [t for t in tests if t["class"] == "TestThinkFormatReward"]
    assert format_tests
    for t in format_tests:
        completions = t["literals"]["completions"]
        assert lenient(completions) == t["literals"]["expected_rewards"], t["test"]
        assert strict(completions) == [0.0] * len(completions)  # none of them has <answer> tags


@pytest.mark.parametrize(
    "test,expected",
    [
        ("test_accuracy_reward_correct_answer", [1.0, 1.0]),
        ("test_accuracy_reward_wrong_answer", [0.0]),
        ("test_accuracy_reward_wrong_answer_no_latex", [0.0]),
        ("test_accuracy_reward_unparsable_gold", [None, None]),
        ("test_accuracy_reward_in_worker_thread", [1.0]),
        ("test_correct_answer_yields_unit_reward", [1.0, 1.0]),
        ("test_incorrect_answer_yields_zero_reward", [0.0]),
        ("test_correct_answer_in_reasoning_yields_zero_reward", [0.0, 0.0]),
        ("test_incomplete_reasoning_yields_zero_reward", [0.0, 0.0]),
        ("test_unparsable_gold_solution_yields_none_reward", [None]),
    ],
)
def test_trl_accuracy_cases(test, expected):
    tests = {t["test"]: t["literals"] for t in json.loads((FIX / "trl_reward_test_cases.json").read_text())["tests"]}
    lit = tests[test]
    completions = [_content(c) for c in lit.get("completions", lit.get("completion"))]
    golds = lit.get("solutions", lit.get("solution"))
    got = get_reward("accuracy")(completions, answer=golds, task=["math"] * len(golds))
    assert got == expected


def test_math_verify_sample_cases():
    cases = json.loads((FIX / "math_verify_cases.json").read_text())["cases"]
    assert len(cases) >= 40
    wrong = [(c["gold"], c["pred"][:60]) for c in cases if verify_math(c["pred"], c["gold"]) != float(c["expected"])]
    assert not wrong
