"""Adversarial review findings on the rewards (hand-computed expectations)."""

from __future__ import annotations

import pytest

from mmrl.rewards import get_reward
from mmrl.rewards.accuracy import verify_answer

T = "<think>x</think>"


def test_gui_click_in_the_point_golds_own_x_y_format_earns_the_coordinate():
    # AndroidControl golds are {"action_type": "click", "x":, "y":}; a model answering in that very format was
    # paid action + format (2.0) but no coordinate, while the same point as `coordinate` got 3.0.
    fn = get_reward("gui_action")
    same = f'{T}<answer>{{"action_type": "click", "x": 100, "y": 200}}</answer>'
    far = f'{T}<answer>{{"action_type": "click", "x": 900, "y": 900}}</answer>'
    as_coordinate = f'{T}<answer>{{"action": "click", "coordinate": [100, 200]}}</answer>'
    point_gold = {"action_type": "click", "x": 100, "y": 200}
    box_gold = {"action_type": "click", "bbox": [90, 190, 110, 210]}
    sizes = [(1000, 1000)] * 3
    assert fn([same, far, as_coordinate], answer=[point_gold] * 3, image_size=sizes) == [3.0, 2.0, 3.0]
    assert fn([same, far, as_coordinate], answer=[box_gold] * 3, image_size=sizes) == [3.0, 2.0, 3.0]


@pytest.mark.parametrize(
    "pred",
    ["The answer is 5 or 6", "The answer is 6 or 5", "either 5 or 6", "It is 5 or maybe 6", "maybe 5, maybe 6",
     "5 apples or 6 apples", "possibly 5 possibly 6", "perhaps 6, perhaps 5"],
)  # fmt: skip
def test_math_prose_hedges_between_numbers_earn_nothing_whichever_is_right(pred):
    # math-verify reads one number out of prose (the first after "answer is", else the last): a hedge paid
    # whenever that number happened to be the right one, while the bare "5 or 6" scored 0.
    assert verify_answer(pred, "5", "math") == 0.0
    assert verify_answer(pred, "6", "math") == 0.0


@pytest.mark.parametrize(
    ("pred", "gold"),
    [("The answer is 5", "5"), ("5 apples", "5"), ("not 6 but 5", "5"), ("5 or five", "5"),
     ("x = 2 or x = -2", "2, -2"), ("The area is 12 square units", "12")],
)  # fmt: skip
def test_math_prose_without_a_hedge_still_scores(pred, gold):
    assert verify_answer(pred, gold, "math") == 1.0


@pytest.mark.parametrize(("task", "gold"), [("count", "-5"), ("number", "-5"), ("number", "-2.5 cm"), ("count", "−5")])
def test_the_unicode_minus_sign_is_a_minus(task, gold):
    # "−5" (U+2212) scored 0 against -5 for count/number (math-verify already read it), and a gold "−5" was None.
    pred = "−2.5 cm" if "2.5" in gold else "−5"
    assert verify_answer(pred, gold, task) == 1.0
    assert verify_answer("5", gold, task) == 0.0
