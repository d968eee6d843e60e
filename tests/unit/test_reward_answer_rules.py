"""One answer block per completion, spelling variants folded without opening hacks, reward kwargs checked at load.

Expectations are written by hand from the rules in `mmrl/rewards/extraction.py` (several `<answer>` blocks: no
answer), `mmrl/rewards/parsing.py` (`normalize_forms` / `numeric_forms`) and `mmrl/rewards/registry.py`
(`kwargs_problem`).
"""

from __future__ import annotations

import pytest

from mmrl.cli import main
from mmrl.errors import ConfigError, UserError
from mmrl.preflight import load_config
from mmrl.rewards import extract_answer, get_reward, verify_answer
from mmrl.rewards.composite import RewardComposite

T = "<think>t</think>"


def _tagged(*answers: str) -> str:
    return T + " ".join(f"<answer>{a}</answer>" for a in answers)


# ------------------------------------------------------------------------------------------ several answer blocks
def test_several_answer_blocks_are_no_answer_whichever_comes_last():
    assert extract_answer(_tagged("B", "A")) is None
    assert extract_answer(_tagged("A", "B")) is None
    assert extract_answer(T + "<answer>B <answer>A</answer>") is None  # two openings, one closing
    assert extract_answer(T + "<answer>A</answer></answer>") is None  # one opening, two closings
    # a draft answer inside the reasoning is a second block too (the format reward's count rule)
    assert extract_answer("<think><answer>B</answer></think><answer>A</answer>") is None
    # several blocks never fall back to a box either
    assert extract_answer(_tagged("B", "A") + " \\boxed{A}", allow_boxed=True) is None
    assert extract_answer(_tagged("A")) == "A"


# (reward, gold column(s), a hedged completion whose LAST block is right, the same right answer given once, kwargs,
#  score of the single right answer, score of the hedge = the reward's score for a missing answer)
BOX = [0, 0, 10, 10]
CASES = [
    ("accuracy", {"answer": "A", "task": "mc", "choices": ["cat", "dog"]}, ("B", "A"), {}, 1.0, 0.0),
    ("accuracy", {"answer": "2\\sqrt{3}", "task": "math"}, ("2", "2\\sqrt{3}"), {}, 1.0, 0.0),
    ("accuracy", {"answer": "yes", "task": "yes_no"}, ("no", "yes"), {}, 1.0, 0.0),
    ("accuracy", {"answer": "2.5", "task": "number"}, ("3", "2.5"), {}, 1.0, 0.0),
    ("accuracy", {"answer": 7, "task": "count"}, ("6", "7"), {}, 1.0, 0.0),
    ("accuracy", {"answer": BOX, "task": "grounding", "image_size": (100, 100)}, ("[50, 50, 60, 60]", str(BOX)), {},
     1.0, 0.0),
    ("hard_format_accuracy", {"answer": "7", "task": "count"}, ("6", "7"), {}, 1.0, 0.0),
    ("iou", {"answer": BOX, "image_size": (100, 100)}, ("[50, 50, 60, 60]", str(BOX)), {}, 1.0, 0.0),
    ("giou", {"answer": BOX, "image_size": (100, 100)}, ("[50, 50, 60, 60]", str(BOX)), {}, 1.0, 0.0),
    ("giou", {"answer": BOX, "image_size": (100, 100)}, ("[50, 50, 60, 60]", str(BOX)), {"raw": True}, 1.0, -1.0),
    ("iou_threshold", {"answer": BOX, "image_size": (100, 100)}, ("[50, 50, 60, 60]", str(BOX)), {}, 1.0, 0.0),
    ("multi_box_iou", {"answer": [BOX], "image_size": (100, 100)}, ("[50, 50, 60, 60]", str(BOX)), {}, 1.0, 0.0),
    ("point_in_box", {"answer": BOX, "image_size": (100, 100)}, ("(90, 90)", "(5, 5)"), {}, 1.0, 0.0),
    # UI-R1: action + coordinate + format, each 0 or 1; the hedge gets none of them
    ("gui_action", {"answer": {"action_type": "click", "bbox": BOX}, "image_size": (100, 100)},
     ("[{'action': 'click', 'coordinate': [90, 90]}]", "[{'action': 'click', 'coordinate': [5, 5]}]"), {}, 3.0, 0.0),
    ("curr_reft_judge", {"answer": "yes"}, ("no", "yes"), {}, 1.0, 0.0),
    ("curr_reft_choice", {"answer": "B"}, ("A", "B"), {}, 1.0, 0.0),
    ("curr_reft_open", {"answer": "B", "task": "mc"}, ("A", "B"), {}, 1.0, 0.0),
    # length 0 of max 1000: a right answer earns 1.0, a wrong (or missing) one -1.0
    ("cosine_length", {"answer": "7", "task": "count", "completion_length": 0}, ("6", "7"), {"max_length": 1000},
     1.0, -1.0),
    ("format", {}, ("B", "A"), {}, 1.0, 0.0),
]


@pytest.mark.parametrize("name,row,answers,kwargs,right,hedge", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_every_answer_reading_reward_scores_a_hedge_as_a_missing_answer(name, row, answers, kwargs, right, hedge):
    # one batch: hedge with the right block last, hedge with it first, the right block alone, then nothing at all
    completions = [_tagged(*answers), _tagged(*reversed(answers)), _tagged(answers[-1]), T + "no tags"]
    columns = {k: [v] * len(completions) for k, v in row.items()}
    got = get_reward(name)(completions, **columns, **kwargs)
    assert got == [hedge, hedge, right, hedge]


def test_the_composite_counts_hedges_per_reward_and_keeps_the_batch_s_other_scores():
    completions = [_tagged("B", "A"), _tagged("A"), _tagged("B"), "<think>t</think><answer>A</answer><answer>A</answer>"]
    columns = {"answer": ["A"] * 4, "task": ["mc"] * 4, "id": ["h1", "ok", "wrong", "h2"]}
    with RewardComposite([{"name": "accuracy"}, {"name": "format", "weight": 0.5}], workers=0) as rc:
        result = rc.score(completions, columns)
    assert result.components["accuracy"] == [0.0, 1.0, 0.0, 0.0]  # even the same answer twice is not one answer
    assert result.components["format"] == [0.0, 1.0, 1.0, 0.0]
    assert result.total == [0.0, 1.5, 0.5, 0.0]
    assert result.counters["accuracy/multiple_answers"] == 2
    assert result.counters["format/multiple_answers"] == 2
    assert not any(k.endswith("/unscorable") or k.endswith("/errors") for k in result.counters)


def test_custom_tags_are_the_ones_counted():
    completions = ["<ans>3</ans><ans>4</ans>", "<ans>4</ans>", "<answer>3</answer><answer>4</answer>"]
    spec = {"name": "accuracy", "kwargs": {"tags": ["<ans>", "</ans>"]}}
    with RewardComposite([spec], workers=0) as rc:
        result = rc.score(completions, {"answer": ["4"] * 3, "task": ["count"] * 3})
    # the third has no <ans> block at all (0.0, a missing answer, not a hedge of the reward's tags)
    assert result.components["accuracy"] == [0.0, 1.0, 0.0]
    assert result.counters == {"accuracy/multiple_answers": 1}


# ------------------------------------------------------------------------------------------ spelling variants
FORMS = [
    # the variants: unambiguous, now right
    ("5.", "5", "math", 1.0),
    ("x = 5.", "5", "math", 1.0),
    ("-5.", "-5", "math", 1.0),
    ("\\frac{1}{2}.", "1/2", "math", 1.0),
    ("５", "5", "math", 1.0),
    ("５.５", "5.5", "math", 1.0),
    ("１／２", "1/2", "math", 1.0),
    ("−５", "-5", "math", 1.0),  # Unicode minus, full-width digit
    ("5°", "5^\\circ", "math", 1.0),
    ("5^\\circ", "5°", "math", 1.0),
    ("30°", "30", "math", 1.0),  # math-verify itself reads 30^\circ as 30
    ("½", "1/2", "math", 1.0),
    ("½", "0.5", "math", 1.0),
    ("1⁄2", "1/2", "math", 1.0),  # U+2044 FRACTION SLASH between digits
    ("1½", "3/2", "math", 1.0),  # a mixed number: math-verify reads 1\frac{1}{2} as 3/2
    ("½", "0.5", "number", 1.0),
    ("Ｂ", "B", "mc", 1.0),
    ("ｙｅｓ", "yes", "yes_no", 1.0),
    # hostile: no hack opens
    ("5.5", "5", "math", 0.0),
    ("5.5.", "5", "math", 0.0),
    ("5. 6", "5", "math", 0.0),  # a list, whichever number is right
    ("5. 6", "6", "math", 0.0),
    ("5..", "5", "math", 0.0),  # only ONE sentence period goes
    ("5.6.", "5", "math", 0.0),
    ("５.５", "5", "math", 0.0),
    ("5°", "6^\\circ", "math", 0.0),
    ("½", "1", "math", 0.0),
    ("1½", "11/2", "math", 0.0),  # NFKC would write 1½ as 11⁄2: the mixed number must not become 5.5
    ("½", "2", "count", 0.0),
    ("Ａ，Ｂ", "B", "mc", 0.0),  # a full-width hedge is still a hedge
    ("ｙｅｓ ｏｒ ｎｏ", "yes", "yes_no", 0.0),
    ("2²", "22", "math", 0.0),  # superscripts are not folded (NFKC would make 2² read 22)
]


@pytest.mark.parametrize("pred,gold,task,expected", FORMS)
def test_spelling_variants_are_folded_and_hostile_ones_are_not(pred, gold, task, expected):
    assert verify_answer(pred, gold, task) == expected


def test_a_batch_mixing_variants_and_hedges_keeps_each_item_s_own_score():
    preds = ["5.", "5. 6", "５", "5.5", "<answer>5</answer>", "5°"]
    completions = [_tagged(p) if not p.startswith("<") else T + p + p for p in preds]
    got = get_reward("accuracy")(completions, answer=["5", "5", "5", "5", "5", "5^\\circ"], task=["math"] * 6)
    assert got == [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]


def test_a_gold_written_with_a_degree_sign_or_full_width_digits_is_read():
    completions = [_tagged("30"), _tagged("30^\\circ"), _tagged("31")]
    assert get_reward("accuracy")(completions, answer=["30°"] * 3, task=["math"] * 3) == [1.0, 1.0, 0.0]
    assert get_reward("accuracy")(completions, answer=["３０"] * 3, task=["math"] * 3) == [1.0, 1.0, 0.0]


# ------------------------------------------------------------------------------------------ reward kwargs
def _config(tmp_path, rewards_yaml: str):
    path = tmp_path / "run.yaml"
    path.write_text("rewards:\n" + rewards_yaml)
    return path


@pytest.mark.parametrize("entry,message", [
    ("  - {name: accuracy, weight: 1, kwargs: {tolerence: 0.1}}\n",
     "rewards.0.kwargs: reward 'accuracy' has no argument 'tolerence'; valid: tags, allow_boxed"),
    ("  - {name: accuracy}\n  - {name: iou_threshold, kwargs: {threshhold: 0.7}}\n",
     "rewards.1.kwargs: reward 'iou_threshold' has no argument 'threshhold' (did you mean 'threshold'?); valid: tags, "
     "pred_frame, threshold"),
    ("  - {name: format, kwargs: {strict: true}}\n", "rewards.0.kwargs: reward 'format' takes no arguments; remove "
     "'strict' from its kwargs"),
    ("  - {name: accuracy, kwargs: {answer: '5'}}\n", "rewards.0.kwargs: 'answer' is a data column"),
    ("  - {name: accuracy, weight: 1, tolerence: 0.1}\n", "unknown key 'rewards.0.tolerence': a reward entry takes "
     "name, weight, kwargs, timeout_s; the reward's own arguments go under kwargs"),
], ids=["typo", "near-miss", "no-arguments", "column", "beside-name"])
def test_a_reward_kwarg_typo_fails_at_config_load_naming_the_field_and_the_valid_ones(tmp_path, entry, message):
    path = _config(tmp_path, entry)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


def test_a_stage_s_reward_kwargs_are_checked_too(tmp_path):
    path = _config(tmp_path, "  - {name: accuracy}\nstages:\n  - {name: s1, steps: 2, rewards: [{name: giou, kwargs: "
                              "{rawe: true}}]}\n")
    with pytest.raises(ConfigError, match=r"stages\.0\.rewards\.0\.kwargs: reward 'giou' has no argument 'rawe' "
                                          r"\(did you mean 'raw'\?\)"):
        load_config(path)


def test_the_cli_exits_2_with_one_line_and_no_traceback(tmp_path, capsys):
    path = _config(tmp_path, "  - {name: accuracy, weight: 1, kwargs: {tolerence: 0.1}}\n")
    assert main(["config", "show", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert "tolerence" in err and "valid: tags, allow_boxed" in err


def test_valid_kwargs_load_and_score(tmp_path):
    path = _config(tmp_path, "  - {name: giou, kwargs: {raw: true}}\n  - {name: overlong, kwargs: {factor: 0.5}}\n")
    cfg = load_config(path)
    assert [s.kwargs for s in cfg.rewards] == [{"raw": True}, {"factor": 0.5}]


def test_the_composite_rejects_a_typo_given_outside_a_config():
    with pytest.raises(UserError, match="reward 'gui_action' has no argument 'click_raduis'.*'click_radius'"):
        RewardComposite([{"name": "gui_action", "kwargs": {"click_raduis": 0.04}}], workers=0)


def test_user_rewards_with_kwargs_accept_anything_and_others_only_their_parameters(tmp_path):
    user = tmp_path / "my_rewards.py"
    user.write_text(
        "def open_ended(completions, **kwargs):\n    return [float(kwargs.get('target', 0))] * len(completions)\n\n"
        "def closed(completions, answer=None, target=1.0, id=None, task=None, choices=None, image_size=None,\n"
        "           input_size=None, box_frame=None, box_format=None):\n    return [target] * len(completions)\n")
    with RewardComposite([{"name": f"{user}:open_ended", "kwargs": {"target": 2, "anything": 1}}], workers=0) as rc:
        assert rc.score(["x"], {"answer": ["1"]}).total == [2.0]
    with RewardComposite([{"name": f"{user}:closed", "kwargs": {"target": 3.0}}], workers=0) as rc:
        assert rc.score(["x"], {"answer": ["1"]}).total == [3.0]
    with pytest.raises(UserError, match="has no argument 'tagret' \\(did you mean 'target'\\?\\); valid: target"):
        RewardComposite([{"name": f"{user}:closed", "kwargs": {"tagret": 3.0}}], workers=0)
    path = _config(tmp_path, f"  - {{name: '{user}:open_ended', kwargs: {{whatever: 1}}}}\n")
    assert load_config(path).rewards[0].kwargs == {"whatever": 1}
