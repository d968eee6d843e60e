"""A math gold math-verify cannot parse (`[`, `\\frac{`, empty) makes the item unscorable: None, counted by the
composite as `accuracy/unscorable`, never a silent 0.0 (nor a 1.0 for a completion that repeats the broken text)."""

from __future__ import annotations

import pytest

from mmrl.rewards.accuracy import accuracy_reward, verify_answer
from mmrl.rewards.composite import RewardComposite

BROKEN_GOLDS = ["[", "\\frac{", "", "   ", "\\sqrt{", "[0,1", "{", "x" * 10_000, "9" * 10_000]


@pytest.mark.parametrize("gold", BROKEN_GOLDS, ids=lambda g: repr(g[:12]) + f"/{len(g)}")
def test_unparseable_math_gold_is_none_for_every_prediction(gold):
    # Right-looking, empty, hedged, absurd and copy-the-gold predictions: none of them may be scored.
    preds = ["5", "", None, "[", "\\frac{", "5 or 6", "10^{10^{10}}", gold]
    assert [verify_answer(p, gold, "math") for p in preds] == [None] * len(preds)


def test_accuracy_reward_mixed_batch_keeps_good_items_scored():
    golds = ["[", "5", "\\frac{", "\\frac{1}{2}", ""]
    completions = ["<answer>5</answer>", "<answer>5</answer>", "<answer>\\frac{</answer>", "<answer>0.5</answer>",
                   "<answer>5</answer>"]
    assert accuracy_reward(completions, answer=golds, task=["math"] * 5) == [None, 1.0, None, 1.0, None]


def test_long_worked_solution_gold_still_scores():
    """A 10k-character gold that ends in its boxed answer is usable (the verifier reads its last part)."""
    gold = "Consider the triangle. " * 440 + "Hence \\boxed{42}."
    assert len(gold) > 10_000
    assert verify_answer("42", gold, "math") == 1.0
    assert verify_answer("41", gold, "math") == 0.0


def test_composite_counts_broken_math_golds_as_unscorable():
    with RewardComposite([{"name": "accuracy"}], workers=0) as composite:
        result = composite.score(["<answer>5</answer>"] * 3, {"answer": ["[", "5", "\\frac{"], "task": ["math"] * 3,
                                                               "id": ["a", "b", "c"]})
    assert result.components["accuracy"] == [None, 1.0, None]
    assert result.total == [None, 1.0, None]
    assert result.counters["accuracy/unscorable"] == 2
