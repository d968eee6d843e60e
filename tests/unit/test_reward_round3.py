"""Third adversarial round (issue 29): the answers a policy finds next and the correct answers models really write,
through EVERY reward that reads answers, in both directions (the hack scores as a wrong answer, the legitimate form
as a right one), and through `mmrl reward score` on the committed corpus.

The corpus, tests/fixtures/rewards/round3_corpus.jsonl, holds one completion per line with its gold, task, class
and `expected` (1: a correct answer, 0: wrong, hedged or no answer); its expectations are written by hand from the
rules in mmrl/rewards/boxes.py (one box per completion), math_answers.py (lists, sets, magnitudes, currency,
negations) and parsing.py (option letters, yes/no, scientific notation).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmrl.cli import main
from mmrl.data.answers import infer_task
from mmrl.rewards import get_reward, list_rewards, verify_answer
from mmrl.rewards.curr_reft import OPEN_FAMILY
from mmrl.rewards.format import is_strict_format

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "rewards"
CORPUS = FIX / "round3_corpus.jsonl"
ROWS = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines()]
T = "<think>r</think>"
BOX = [0, 0, 10, 10]
CLASSES = ("boxes", "list_gold", "negations", "fbox", "magnitudes", "yes_no", "invisible", "mc_forms", "scientific",
           "set_gold", "currency", "next_hacks", "review")


def _tagged(row: dict) -> bool:
    return "<answer>" in row["completion"]


# What each answer-reading reward pays for a right and for a wrong answer on a corpus row, or None where the reward
# does not score the row (a task it has no reader for); a reward whose extraction reads only answer tags (Curr-ReFT)
# sees no answer in a completion that gives it only in a box.
def _accuracy(row):
    return float(row["expected"])


def _hard_format(row):
    return float(row["expected"]) if is_strict_format(row["completion"]) else 0.0


def _cosine(row):  # completion_length 0: 1.0 for a right answer, -1.0 for a wrong or missing one
    return 1.0 if row["expected"] else -1.0


def _judge(row):
    return (float(row["expected"]) if _tagged(row) else 0.0) if row["task"] == "yes_no" else None


def _choice(row):
    return (float(row["expected"]) if _tagged(row) else 0.0) if row["task"] == "mc" else None


def _open(row):
    # count and number are scored as math by Curr-ReFT (OPEN_FAMILY); math-verify reads no units
    if row["task"] not in OPEN_FAMILY or (row["task"] == "number" and " m" in row["answer"]):
        return None
    return float(row["expected"]) if _tagged(row) else 0.0


def _format(row):  # the layout reward: the invisible-answer class only (its other rows are all well laid out)
    return float(row["expected"]) if row["class"] == "invisible" else None


CORPUS_READERS = {"accuracy": _accuracy, "hard_format_accuracy": _hard_format, "cosine_length": _cosine,
                  "curr_reft_judge": _judge, "curr_reft_choice": _choice, "curr_reft_open": _open, "format": _format}
# The box and GUI rewards read coordinates, not these tasks: their rows are GROUNDING_CASES below.
GROUNDING_READERS = ("iou", "giou", "iou_threshold", "multi_box_iou", "point_in_box", "gui_action")


def test_every_answer_reading_reward_in_the_registry_is_covered():
    reading = {name for name in list_rewards() if getattr(get_reward(name), "mmrl_reads_answer", False)}
    assert reading == set(CORPUS_READERS) | set(GROUNDING_READERS)


def test_the_corpus_has_both_directions_of_every_class_with_several_variants():
    for cls in CLASSES:
        rows = [r for r in ROWS if r["class"] == cls]
        hacks, legit = [r for r in rows if not r["expected"]], [r for r in rows if r["expected"]]
        assert len(hacks) >= 3 and len(legit) >= 2, cls


def _columns(rows: list[dict]) -> dict:
    return {"answer": [r["answer"] for r in rows], "task": [r["task"] for r in rows],
            "completion_length": [r["completion_length"] for r in rows]}


# every (class, reward) pair where the reward scores some of the class's rows
PAIRS = [(cls, name) for cls in CLASSES for name in sorted(CORPUS_READERS)
         if any(r["class"] == cls and CORPUS_READERS[name](r) is not None for r in ROWS)]


@pytest.mark.parametrize("cls,name", PAIRS, ids=[f"{c}-{n}" for c, n in PAIRS])
def test_each_class_through_each_answer_reading_reward(cls, name):
    rows = [r for r in ROWS if r["class"] == cls and CORPUS_READERS[name](r) is not None]
    got = get_reward(name)([r["completion"] for r in rows], **_columns(rows))
    wrong = [(r["why"], r["task"], r["completion"], got[i], CORPUS_READERS[name](r))
             for i, r in enumerate(rows) if got[i] != CORPUS_READERS[name](r)]
    assert not wrong, wrong


GROUNDING_CASES = [
    # (reward, columns, completion, expected)
    *[(name, {"answer": BOX, "image_size": (100, 100)}, completion, value)
      for name in ("iou", "giou", "iou_threshold", "multi_box_iou")
      for completion, value in [
          (T + "<answer>[0, 0, 10, 10]</answer>", 1.0),
          (T + "<answer>[0, 0, 10, 10]</answer> \\boxed{[50, 50, 60, 60]}", 0.0),  # a box outside the block
          (T + "<answer>[50, 50, 60, 60] or \\boxed{[0, 0, 10, 10]}</answer>", 0.0),  # a hedged box
          (T + "<answer>\\boxed{[50, 50, 60, 60]} or \\boxed{[0, 0, 10, 10]}</answer>", 0.0),  # two boxes
      ]],
    ("accuracy", {"answer": BOX, "task": "grounding", "image_size": (100, 100)},
     T + "<answer>[0, 0, 10, 10]</answer>", 1.0),
    ("accuracy", {"answer": BOX, "task": "grounding", "image_size": (100, 100)},
     T + "<answer>[0, 0, 10, 10]</answer>\\boxed{[50, 50, 60, 60]}", 0.0),
    ("point_in_box", {"answer": BOX, "image_size": (100, 100)}, T + "<answer>(5, 5)</answer>", 1.0),
    ("point_in_box", {"answer": BOX, "image_size": (100, 100)}, T + "<answer>(90, 90) or \\boxed{(5, 5)}</answer>", 0.0),
    ("point_in_box", {"answer": BOX, "image_size": (100, 100)}, T + "<answer>(5, 5)</answer> \\fbox{(90, 90)}", 0.0),
    ("gui_action", {"answer": {"action_type": "click", "bbox": BOX}, "image_size": (100, 100)},
     T + "<answer>[{'action': 'click', 'coordinate': [5, 5]}]</answer>", 3.0),
    ("gui_action", {"answer": {"action_type": "click", "bbox": BOX}, "image_size": (100, 100)},
     T + "<answer>[{'action': 'click', 'coordinate': [5, 5]}]</answer> \\boxed{1} \\boxed{2}", 0.0),
]


@pytest.mark.parametrize("name,row,completion,expected", GROUNDING_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(GROUNDING_CASES)])
def test_boxes_rules_hold_for_the_coordinate_rewards(name, row, completion, expected):
    assert get_reward(name)([completion], **{k: [v] for k, v in row.items()}) == [expected]


def test_reward_score_on_the_corpus_shows_every_row(tmp_path, capsys):
    code = main(["reward", "score", "--reward", "accuracy", "--reward", "hard_format_accuracy=0",
                 "--reward", "cosine_length=0", "--input", str(CORPUS), "--workers", "0"])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    items = [line for line in lines if "line" in line]
    assert len(items) == len(ROWS)
    for row, item in zip(ROWS, items, strict=True):
        for name in ("accuracy", "hard_format_accuracy", "cosine_length"):
            assert item[name] == CORPUS_READERS[name](row), (name, row["why"], row["completion"], item)
    summary = lines[-1]["summary"]
    assert summary["items"] == len(ROWS) and summary["total"]["none"] == 0  # every gold scorable (currency too)


# ------------------------------------------------------------------ currency golds are scored, not dropped
@pytest.mark.parametrize("gold", ["\\$18.90", "$18.90", "\\$ 18.90", "\\$1,234.50"])
def test_a_currency_gold_is_scorable_and_its_task_is_number(gold):
    assert verify_answer(None, gold, "math") == 0.0  # a missing answer is wrong, the gold is usable (was None)
    assert verify_answer(None, gold, "number") == 0.0
    assert infer_task(gold) == "number"
    plain = gold.replace("\\$", "").replace("$", "").strip()
    assert verify_answer(plain, gold, "math") == 1.0 and verify_answer(plain, gold, "number") == 1.0


def test_mmrl_data_check_finds_a_currency_gold_scorable(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": f"c{i}", "prompt": "How much?", "answer": "\\$18.90", "task": task}) + "\n"
                            for i, task in enumerate(["math", "number"])))
    code = main(["data", "check", str(data)])
    printed = capsys.readouterr()
    assert "cannot score the gold" not in printed.out + printed.err and code == 0


def test_the_composite_counts_two_different_boxes_as_multiple_answers_not_the_same_box_twice():
    from mmrl.rewards.composite import RewardComposite

    completions = [T + " \\boxed{3} or \\boxed{4}", T + " \\boxed{4}. **Final Answer** \\boxed{4}",
                   T + " \\boxed{\\boxed{4}}", T + " \\boxed{4}"]
    with RewardComposite([{"name": "accuracy"}], workers=0) as rc:
        result = rc.score(completions, {"answer": ["4"] * 4, "task": ["count"] * 4})
    assert result.components["accuracy"] == [0.0, 1.0, 0.0, 1.0]  # the same answer boxed twice is one answer
    assert result.counters == {"accuracy/multiple_answers": 2}


@pytest.mark.parametrize("pred,expected", [("18.90 euros", 0.0), ("18.9 EUR", 0.0), ("18.90 dollars", 1.0),
                                           ("18.90", 1.0), ("$18.90", 1.0), ("18.90 USD", 1.0)])
def test_a_currency_gold_states_its_unit_for_number(pred, expected):
    # the gold's `\$` is its unit: before, "18.90 euros" was compared by its number alone and paid
    assert verify_answer(pred, "\\$18.90", "number") == expected


@pytest.mark.parametrize("pred,expected", [("4+", 0.0), ("4+ apples", 0.0), ("x < 5", 0.0), ("4 \\ne 5", 0.0),
                                           ("4", 1.0), ("4 apples", 1.0)])
def test_a_count_read_by_symbols_is_a_bound_or_no_answer(pred, expected):
    assert verify_answer(pred, "4", "count") == expected


@pytest.mark.parametrize("pred,gold,expected", [("5", "-\\$5", 0.0), ("\\$5", "-\\$5", 0.0), ("-5", "-\\$5", 1.0),
                                                ("-\\$5", "-\\$5", 1.0), ("-\\$5", "-5", 1.0), ("-\\$5", "5", 0.0)])
def test_a_negative_currency_amount_keeps_its_sign(pred, gold, expected):
    # `-\$5` lost its `$` but kept the backslash: `-\5` read as 5, so the sign was dropped from gold and answer
    assert verify_answer(pred, gold, "number") == expected
