"""Rewards that can't be gamed: each class of defect with hand-computed expectations, hostile items mixed with normal
ones in the same batch (the committed hostile corpus is tests/fixtures/rewards/hostile_corpus.jsonl)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmrl.errors import UserError
from mmrl.rewards import get_reward
from mmrl.rewards.accuracy import verify_answer, verify_math
from mmrl.rewards.composite import RewardComposite
from mmrl.rewards.extraction import extract_answer, last_boxed
from mmrl.rewards.limits import absurd_math

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "rewards"
STALLS = f"{FIX / 'user_reward.py'}:stalls"
T = "<think>r</think>"


def hostile_corpus() -> list[dict]:
    """The committed corpus, with the megabyte completions expanded."""
    rows = []
    for line in (FIX / "hostile_corpus.jsonl").read_text().splitlines():
        row = json.loads(line)
        spec = row.pop("completion_repeat", None)
        if spec:
            row["completion"] = spec["prefix"] + spec["repeat"] * spec["times"] + spec["suffix"]
        rows.append(row)
    return rows


# ---------------------------------------------------------------- 1. math golds written as bare LaTeX
@pytest.mark.parametrize(
    "pred,gold,expected",
    [
        ("2", "2\\sqrt{3}", 0.0),  # the number inside the gold is not the gold
        ("2\\sqrt{5}", "2\\sqrt{3}", 0.0),
        ("$2\\sqrt{3}$", "2\\sqrt{3}", 1.0),
        ("2\\sqrt3", "2\\sqrt{3}", 1.0),
        ("3", "3\\pi", 0.0),
        ("3\\pi", "3\\pi", 1.0),
        ("2", "2^{10}", 0.0),
        ("1024", "2^{10}", 1.0),
        ("4", "4\\sqrt2+1", 0.0),
        ("1+4\\sqrt{2}", "4\\sqrt2+1", 1.0),
        ("2", "y=2x+1", 0.0),
        ("y = 1+2x", "y=2x+1", 1.0),
        ("[0,1]", "$[0,1]$", 1.0),
        ("[0,1]", "[0,1]", 1.0),  # a bare interval gold is scorable
        ("(0,1)", "[0,1]", 0.0),
        ("x^2", "x^2", 1.0),
        ("x^3", "x^2", 0.0),
        ("x<3", "x<3", 1.0),
        ("x>3", "x<3", 0.0),
        ("1,000.99", "1000.99", 1.0),  # plain numbers keep the number path (thousands separators)
        ("\\frac{9}{7}", "\\dfrac{9}{7}", 1.0),
    ],
)
def test_math_reads_bare_latex_whole(pred, gold, expected):
    assert verify_math(pred, gold) == expected


def test_math_only_an_unusable_gold_is_none():
    assert verify_math("5", "two and a half") is None
    assert verify_math("5", "10^{10^{10}}") is None  # an absurd gold is unusable, never scored
    assert verify_math("$10^{10^{10}}$", "5") == 0.0  # an absurd prediction is wrong


# ---------------------------------------------------------------- 2. hostile predictions: 0.0, never None
def test_absurd_math_flags_the_hostile_kinds_and_passes_ordinary_answers():
    for text in ["10^{10^{10}}", "(10^{100})!", "9^{9^{9^{9}}}", "2^{1000000}", "x^{10^{10}}", "(" * 40 + "1" + ")" * 40,
                 "9" * 5000]:  # fmt: skip
        assert absurd_math(text), text
    for text in ["2^{10}", "x^{2}+1", "e^{x^2}", "100!", "2^{2^{3}}", "\\frac{\\sqrt{3}}{2}", "(1, 2)"]:
        assert absurd_math(text) is None, text


def test_hostile_corpus_scores_zero_in_process():
    rows = hostile_corpus()
    assert len(rows) >= 20
    accuracy = get_reward("accuracy")
    got = [accuracy([r["completion"]], answer=[r["answer"]], task=[r["task"]])[0] for r in rows]
    assert got == [r["expected_accuracy"] for r in rows], [r["why"] for r, g in zip(rows, got) if g != 0.0]


def test_hostile_items_mixed_with_normal_ones_in_the_worker_pool():
    rows = hostile_corpus()
    normal = [(f"{T}<answer>\\frac{{1}}{{2}}</answer>", "0.5", "math", 1.0), (f"{T}<answer>3</answer>", "4", "count", 0.0),
              (f"{T}<answer>B</answer>", "B", "mc", 1.0), (f"{T}<answer>[0, 0, 10, 10]</answer>", [0, 0, 10, 10],
              "grounding", 1.0)]  # fmt: skip
    batch = [(r["completion"], r["answer"], r["task"], r["expected_accuracy"]) for r in rows]
    mixed = [item for pair in zip(batch, normal * 5, strict=False) for item in pair]
    completions = [m[0] for m in mixed]
    columns = {"answer": [m[1] for m in mixed], "task": [m[2] for m in mixed]}
    with RewardComposite([{"name": "accuracy"}, {"name": "format", "weight": 0.5}], workers=2) as rc:
        result = rc.score(completions, columns)
    assert result.components["accuracy"] == [m[3] for m in mixed]
    assert None not in result.total
    assert "accuracy/unscorable" not in result.counters


# ---------------------------------------------------------------- 2/3. timeouts: the completion's fault scores 0
def test_timeouts_in_the_pool_score_zero_only_when_the_item_is_scorable():
    completions = ["C-STALL", "2", "anything", "C-STALL", "PY-STALL", "3", "2"]
    answers = ["2", "2", "SLOW-GOLD", None, "2", "2", "C-SLOW-GOLD"]
    with RewardComposite([{"name": STALLS, "timeout_s": 0.5}], workers=1) as rc:
        result = rc.score(completions, {"answer": answers})
    assert result.components[STALLS] == [0.0, 1.0, None, None, 0.0, 0.0, None]
    assert result.counters == {f"{STALLS}/timeouts": 2, f"{STALLS}/unscorable": 3}


def test_timeouts_in_process_score_zero_only_when_the_item_is_scorable():
    with RewardComposite([{"name": STALLS, "timeout_s": 0.5}], workers=0) as rc:
        result = rc.score(["PY-STALL", "2", "x", "PY-STALL"], {"answer": ["2", "2", "SLOW-GOLD", None]})
    assert result.components[STALLS] == [0.0, 1.0, None, None]
    assert result.counters == {f"{STALLS}/timeouts": 1, f"{STALLS}/unscorable": 2}


# ---------------------------------------------------------------- 3. one slow item does not wipe out a batch
def test_a_slow_cheap_item_costs_only_itself():
    def slow_on_one(completions, **_):
        for c in completions:
            while "PY-STALL" in c:
                pass
        return [float(len(c)) for c in completions]

    slow_on_one.mmrl_heavy = False
    rc = RewardComposite([{"name": "format", "timeout_s": 0.5}], workers=0)
    rc.fns, rc.targets = [slow_on_one], [None]
    result = rc.score(["ab", "PY-STALL", "abcd"], {})
    assert result.components["format"] == [2.0, 0.0, 4.0]
    assert result.counters == {"format/timeouts": 1}


def test_gui_action_batch_with_point_box_and_bad_golds():
    good = f"{T}<answer>[{{'action': 'click', 'coordinate': [150, 150]}}]</answer>"
    golds = [{"action_type": "click", "x": 160, "y": 140}, {"action_type": "click", "bbox": [100, 100, 200, 200]},
             {"action_type": "click"}, "not an action"]  # fmt: skip
    with RewardComposite([{"name": "gui_action"}], workers=0) as rc:
        result = rc.score([good] * 4, {"answer": golds, "image_size": [(1000, 1000)] * 4})
    assert result.components["gui_action"] == [3.0, 3.0, None, None]
    assert result.counters == {"gui_action/unscorable": 2}
    megabyte = f"{T}<answer>{'[' * 1_000_000}</answer>"  # not an action: parsed as nothing, not for seconds
    assert get_reward("gui_action")([megabyte, good], answer=golds[:1] * 2, image_size=[(1000, 1000)] * 2) == [0.0, 3.0]


# ---------------------------------------------------------------- 4. GIoU of absurd boxes
HUGE = f"{T}<answer>[-1.7e308, -1.7e308, 1.7e308, 1.7e308]</answer>"
FAR = f"{T}<answer>[1e308, 1e308, 1.7e308, 1.7e308]</answer>"


@pytest.mark.parametrize(
    "name,kwargs,expected",
    [("giou", {}, [0.0, 0.0, 1.0]), ("giou", {"raw": True}, [-1.0, -1.0, 1.0]), ("iou", {}, [0.0, 0.0, 1.0]),
     ("iou_threshold", {}, [0.0, 0.0, 1.0])],
)  # fmt: skip
def test_non_finite_box_scores_are_invalid_predictions(name, kwargs, expected):
    completions = [HUGE, FAR, f"{T}<answer>[0, 0, 10, 10]</answer>"]
    assert get_reward(name)(completions, answer=[[0, 0, 10, 10]] * 3, **kwargs) == expected


# ---------------------------------------------------------------- 5. point golds (AndroidControl)
def _click(x, y):
    return f"{T}<answer>[{{'action': 'click', 'coordinate': [{x}, {y}]}}]</answer>"


def test_gui_action_point_golds():
    gold = {"action_type": "click", "x": 1027, "y": 209}
    fn = get_reward("gui_action")
    # (1040, 300): dx 13/1080 = 0.0120, dy 91/2400 = 0.0379 -> 0.0398 of the screen; (1027, 569): dy 0.15.
    assert fn([_click(1040, 300), _click(1027, 569), _click(1027, 500)], answer=[gold] * 3,
              image_size=[(1080, 2400)] * 3) == [3.0, 2.0, 3.0]  # fmt: skip
    # Qwen2.5-VL's stricter 0.04: (1040, 310) is 0.0438 away.
    assert fn([_click(1040, 300), _click(1040, 310)], answer=[gold] * 2, image_size=[(1080, 2400)] * 2,
              click_radius=0.04) == [3.0, 2.0]  # fmt: skip
    # The model answers in its half-size input frame: (520, 150) -> (1040, 300).
    assert fn([_click(520, 150)], answer=[gold], image_size=[(1080, 2400)], input_size=[(540, 1200)]) == [3.0]
    assert fn([_click(1040, 300)], answer=[gold]) == [None]  # no screen size: the distance cannot be measured
    with pytest.raises(UserError, match="click_radius"):
        fn([_click(1, 1)], answer=[gold], image_size=[(10, 10)], click_radius=-1)


# ---------------------------------------------------------------- 6. overlong from the stage's length
def test_overlong_defaults_to_the_stage_limit_and_rejects_a_negative_factor():
    fn = get_reward("overlong")
    # max 256 -> buffer round(0.2 * 256) = 51: 0 up to 205, then -(L - 205) / 51.
    got = fn(["x"] * 4, completion_length=[205, 230, 256, 300], max_completion_length=[256] * 4)
    assert got == pytest.approx([0.0, -25 / 51, -1.0, -1.0])
    with pytest.raises(UserError, match="factor"):
        fn(["x"], completion_length=[10], max_length=16, factor=-1.0)
    with pytest.raises(UserError, match="max_completion_length"):
        fn(["x"], completion_length=[10])


def test_trainer_columns_carry_the_stage_limit():
    from mmrl.data.sample import Sample
    from mmrl.rl.experience import _columns

    columns = _columns([Sample(id="a", prompt="p", answer="1", task="count")], 2, [5, 7], 96)
    assert columns["max_completion_length"] == [96, 96] and columns["completion_length"] == [5, 7]


# ---------------------------------------------------------------- 7. curr_reft_open pays no hedges
def test_curr_reft_open_hedges_earn_nothing():
    fn = get_reward("curr_reft_open")
    completions = [f"{T}<answer>{a}</answer>" for a in ["A, B, C, D", "B", "yes, no", "Yes", "cat, dog, bird",
                                                          "cat, dog", "A", "the"]]  # fmt: skip
    answers = ["B", "B", "yes", "yes", "cat", "cat, bird", "A", "A"]
    tasks = ["mc", "mc", "yes_no", "yes_no", "classification", "classification", "text", "text"]
    assert fn(completions, answer=answers, task=tasks) == pytest.approx([0.0, 1.0, 0.0, 1.0, 0.0, 1 / 3, 1.0, 0.0])


def test_article_stripping_keeps_a_one_letter_gold():
    assert verify_answer("A", "A", "text") == 1.0
    assert verify_answer("an", "A", "text") == 0.0
    assert verify_answer("The Eiffel Tower", "eiffel tower", "text") == 1.0


# ---------------------------------------------------------------- 8. numbers: units, LaTeX fractions, number words
@pytest.mark.parametrize(
    "pred,gold,task,meta,expected",
    [
        ("5 m", "5 cm", "number", {}, 0.0),
        ("5 mm", "5 cm", "number", {}, 0.0),
        ("5mm", "5 cm", "number", {}, 0.0),
        ("5 cm", "5 cm", "number", {}, 1.0),
        ("5 centimeters", "5 cm", "number", {}, 1.0),
        ("5", "5 cm", "number", {}, 1.0),  # no unit stated: compared by number
        ("5 m^2", "5 cm^2", "number", {}, 0.0),
        ("12 m", "12", "number", {"unit": "cm"}, 0.0),
        ("12 cm", "12", "number", {"unit": "cm"}, 1.0),
        ("\\frac{1}{2}", "0.5", "number", {}, 1.0),
        ("$-\\dfrac{3}{4}$", "-0.75", "number", {}, 1.0),
        ("one hundred", "100", "count", {}, 1.0),
        ("a hundred and five", "105", "count", {}, 1.0),
        ("two thousand three hundred", 2300, "count", {}, 1.0),
        ("five three", "5", "count", {}, 0.0),  # two numbers, not fifty-three
        ("1e999999999", "5", "count", {}, 0.0),
    ],
)
def test_numbers(pred, gold, task, meta, expected):
    assert verify_answer(pred, gold, task, **meta) == expected


# ---------------------------------------------------------------- extraction stays linear and right
def test_extraction_of_unclosed_and_nested_tags():
    assert last_boxed("\\boxed{\\boxed{2}}") == "2"
    assert last_boxed("\\boxed{a} \\boxed{b") == "a"
    assert last_boxed("\\boxed{" * 100_000) is None
    assert extract_answer("<answer>" * 100_000) is None
    assert extract_answer("<answer>1<answer>2</answer>") is None  # two openings: several answers, none counts


# ---------------------------------------------------------------- the CLI: ids, scores, summary
def test_cli_prints_ids_scores_and_a_summary(tmp_path, capsys):
    from mmrl.cli import main

    data = tmp_path / "c.jsonl"
    rows = [{"completion": "2", "answer": "2", "id": "a"}, {"completion": "PY-STALL", "answer": "2", "id": "b"},
            {"completion": "2", "answer": None}]  # fmt: skip
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert main(["reward", "score", "--reward", STALLS, "--input", str(data), "--timeout", "0.5", "--workers", "1"]) == 0
    captured = capsys.readouterr()
    out = [json.loads(line) for line in captured.out.splitlines()]
    assert out[:3] == [{"line": 1, "id": "a", "total": 1.0, STALLS: 1.0},
                       {"line": 2, "id": "b", "total": 0.0, STALLS: 0.0}, {"line": 3, "total": None, STALLS: None}]
    assert out[3] == {"summary": {"items": 3, "total": {"mean": 0.5, "none": 1, "errors": 0, "timeouts": 1},
                                  STALLS: {"mean": 0.5, "none": 1, "errors": 0, "timeouts": 1}}}  # fmt: skip
    assert "timeouts 1" in captured.err and "None 1" in captured.err


def test_math_verify_issue_cases():
    """Pitfalls from math-verify's issue tracker (copied into tests/fixtures): the ones with a definite answer hold.

    Issue #64's sqrt(1/n) vs 1/sqrt(n) is left out: they are equal only for n > 0, which math-verify cannot assume."""
    cases = json.loads((FIX / "math_verify_issue_cases.json").read_text())["cases"]
    checked = 0
    for case in cases:
        gold, pred, expected = case.get("gold"), case.get("pred") or case.get("pred_tail"), case.get("expected")
        if gold and pred and isinstance(expected, bool) and "sqrt{1/n}" not in gold:
            assert verify_math(pred, gold) == float(expected), case["issue"]
            checked += 1
    assert checked == 3  # issues 37 (\text{13} = 13), 60 (two different equations), 76 (**73** in markdown)
    assert verify_math("\\dfrac{9}{7}", "\\dfrac{9}{7}") == 1.0  # issue 70: a bare LaTeX gold parses
    assert verify_math(cases[6]["pred"], "840") == 1.0  # issue 44: the same box twice is 840, not 840840


@pytest.mark.parametrize("pred,gold,expected", [
    ("3, 5", "5", 0.0), ("3 5", "5", 0.0), ("3 and 5", "5", 0.0), ("5; 3", "5", 0.0),  # candidate lists: hedges
    ("5", "5", 1.0), ("1,000", "1000", 1.0), ("5, 5", "5", 1.0), ("-5", "-5", 1.0),  # one number, however written
    ("3, 5", "3, 5", 1.0),  # a gold that is itself a list is compared as math-verify reads it
])
def test_math_bare_number_lists_are_hedges(pred, gold, expected):
    from mmrl.rewards.registry import get_reward

    mixed = get_reward("accuracy")([f"<answer>{pred}</answer>", "<answer>5</answer>"], answer=[gold, "5"],
                                   task=["math", "math"])
    assert mixed == [expected, 1.0]
