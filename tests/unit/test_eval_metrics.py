"""pass@k / mean@k on hand-made numbers, scoring of fixed generations, and the report's breakdown."""

from __future__ import annotations

from math import comb

import pytest

from mmrl.data.sample import Sample
from mmrl.eval.metrics import mean_at_k, pass_at_k, pass_ks
from mmrl.eval.report import build_report, flat_metrics, report_markdown
from mmrl.eval.scoring import ItemScore, score_generations


def test_pass_at_k_hand_computed():
    # n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)  # pass@1 is the fraction correct
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - comb(7, 5) / comb(10, 5))  # = 1 - 21/252
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 1, 4) == 1.0
    assert pass_at_k(3, 2, 2) == 1.0  # n - c < k: every draw holds a correct one
    assert mean_at_k([1.0, 0.0, 0.0, 1.0]) == 0.5
    assert pass_ks(8) == [1, 2, 4, 8] and pass_ks(3) == [1, 2, 3] and pass_ks(1) == [1]
    with pytest.raises(ValueError):
        pass_at_k(2, 3, 1)
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def _samples() -> list[Sample]:
    return [
        Sample(id="m1", prompt="1/2 + 1/4?", answer="3/4", task="math", meta={"category": "algebra"}),
        Sample(id="c1", prompt="How many?", answer="3", task="count", meta={"category": "counting"}),
        Sample(id="y1", prompt="Is it red?", answer="yes", task="yes_no", meta={"category": "counting"}),
        Sample(id="q1", prompt="Which?", answer="B", task="mc", choices=["cat", "dog", "cow"]),
        Sample(id="bad", prompt="?", answer="forty two", task="math"),  # gold math-verify cannot parse
    ]


GENERATIONS = [
    ["<think>..</think><answer>\\frac{3}{4}</answer>", "<answer>0.75</answer>", "<answer>1/2</answer>", "no tags"],
    ["<answer>3</answer>", "<answer>three</answer>", "<answer>4</answer>", "<think><answer>3</answer></think>"],
    ["<answer>no</answer>", "<answer>No</answer>", "<answer>nope</answer>", "<answer>no</answer>"],
    ["<answer>B</answer>", "<answer>(B) dog</answer>", "<answer>B</answer>", "<answer>B</answer>"],
    ["<answer>42</answer>", "<answer>42</answer>", "", "<answer>x</answer>"],
]


def test_score_generations_matches_the_accuracy_reward_on_fixed_strings():
    items = score_generations(_samples(), GENERATIONS)
    assert [it.scores for it in items[:4]] == [
        [1.0, 1.0, 0.0, 0.0],  # \frac{3}{4} and 0.75 verify; no tags -> 0
        [1.0, 1.0, 0.0, 0.0],  # "three" parses as 3; an answer only inside <think> does not count
        [0.0, 0.0, 0.0, 0.0],
        [1.0, 1.0, 1.0, 1.0],
    ]
    assert items[0].predictions[:2] == ["\\frac{3}{4}", "0.75"] and items[0].predictions[3] is None
    assert items[4].unscorable and items[4].reason and not items[0].unscorable
    assert (items[0].category, items[3].category) == ("algebra", None)


def test_report_overall_breakdown_and_unscorable_excluded():
    items = score_generations(_samples(), GENERATIONS)
    report = build_report(items, k=4)
    # Scorable items: m1 (2/4), c1 (2/4), y1 (0/4), q1 (4/4) -> mean@4 = 0.5; "bad" is excluded.
    assert report["n"] == 5 and report["scored"] == 4 and report["unscorable"] == 1
    assert report["unscorable_ids"] == ["bad"]
    assert report["accuracy"] == pytest.approx(0.5) and report["mean@k"] == report["accuracy"]
    # pass@2 per item: 1 - C(2,2)/C(4,2) = 5/6 for c=2; 0 for c=0; 1 for c=4
    assert report["pass@2"] == pytest.approx((5 / 6 + 5 / 6 + 0 + 1) / 4)
    assert report["pass@4"] == pytest.approx(0.75)
    assert report["pass@1"] == pytest.approx(report["accuracy"])
    assert report["by_task"]["math"] == {
        "n": 2, "scored": 1, "unscorable": 1, "accuracy": 0.5, "mean_score": 0.5, "mean@k": 0.5,
        "pass@1": 0.5, "pass@2": pytest.approx(5 / 6), "pass@4": 1.0,
    }
    assert set(report["by_category"]) == {"algebra", "counting"}
    assert report["by_category"]["counting"]["accuracy"] == pytest.approx(0.25)
    table = report_markdown(report)
    assert "| **all** | 5 | 4 | 0.500 |" in table and "| task: mc | 1 | 1 | 1.000 |" in table
    assert "category: algebra" in table and "1 unscorable item(s) excluded" in table
    flat = flat_metrics(report)
    assert flat["eval/accuracy"] == pytest.approx(0.5) and flat["eval/pass@4"] == pytest.approx(0.75)
    assert flat["eval/unscorable"] == 1.0 and flat["eval/task/mc/accuracy"] == 1.0
    assert flat["eval/category/counting/accuracy"] == pytest.approx(0.25)


def test_report_with_k1_has_no_pass_at_k_and_threshold_applies_to_fractional_scores():
    items = [ItemScore("a", "grounding", None, [0.6]), ItemScore("b", "grounding", None, [0.4])]
    report = build_report(items, k=1, threshold=0.5)
    assert report["accuracy"] == 0.5 and report["mean_score"] == pytest.approx(0.5)
    assert not any(key.startswith("pass@") for key in report)
    assert build_report([], k=1)["accuracy"] is None


def test_grounding_gui_and_custom_reward_tasks_are_scored_by_the_reward_code(tmp_path):
    grounding = Sample(id="g1", prompt="Find the cat.", answer=[10, 10, 50, 50], task="grounding",
                       image_size=(100, 100))
    click = Sample(id="u1", prompt="Open settings.", answer={"action_type": "click", "bbox": [100, 100, 200, 200]},
                   task="gui", image_size=(400, 400))
    custom = Sample(id="x1", prompt="Say hi.", answer="hi", task="greeting")
    reward_file = tmp_path / "my_reward.py"
    reward_file.write_text("def score(completions, answer, **_):\n"
                           "    return [0.75 if a in c else 0.25 for c, a in zip(completions, answer)]\n")
    items = score_generations(
        [grounding, click, custom],
        [
            ["<answer>[12, 12, 50, 48]</answer>", "<answer>[60, 60, 90, 90]</answer>", "<answer>box</answer>"],
            ["<think>t</think><answer>[{'action': 'click', 'coordinate': [150, 150]}]</answer>",
             "<answer>[{'action': 'click', 'coordinate': [10, 10]}]</answer>",  # action right, point outside
             "<answer>[{'action': 'scroll', 'direction': 'down'}]</answer>"],
            ["<answer>hi there</answer>", "<answer>bye</answer>", "hi"],
        ],
        reward_for_task={"greeting": f"{reward_file}:score"},
    )
    assert items[0].scores == [1.0, 0.0, 0.0]  # IoU > 0.5, disjoint, unparseable
    assert items[1].scores == [1.0, 0.0, 0.0]  # format is not correctness: only action AND target count
    assert items[2].scores == [0.75, 0.25, 0.75]
    report = build_report(items, k=3)
    assert report["by_task"]["greeting"]["accuracy"] == pytest.approx(2 / 3)  # 0.75 >= 0.5 counts as correct
    assert report["by_task"]["greeting"]["mean_score"] == pytest.approx(1.75 / 3)
