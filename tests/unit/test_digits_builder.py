"""`mmrl build-data digits`: real handwritten scans (scikit-learn's bundled copy), a fixed split of the scans with no
scan on both sides, numbers the accuracy reward scores, short and long CoT targets, and one-line refusals of bad
arguments (command line and pipeline step alike) and of a missing scikit-learn."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_pipelines.builder_args import check_args
from data_pipelines.digits import _args, build_digits, load_scans, split_scans
from mmrl.cli import main
from mmrl.errors import UserError
from mmrl.rewards.accuracy import accuracy_reward


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def test_the_scan_split_is_fixed_disjoint_complete_and_has_every_class_on_both_sides():
    images, labels = load_scans()
    train, held_out = split_scans(labels)
    assert not set(train) & set(held_out) and sorted(train + held_out) == list(range(len(labels))) == list(range(1797))
    assert (train, held_out) == split_scans()  # independent of anything a run varies
    assert 0.24 < len(held_out) / 1797 < 0.26
    for digit in range(10):
        assert sum(labels[i] == digit for i in held_out) >= 40 and sum(labels[i] == digit for i in train) >= 130
    # no scan of one side equals one of the other pixel for pixel either
    train_pixels = {images[i].tobytes() for i in train}
    assert not any(images[i].tobytes() in train_pixels for i in held_out)


def test_train_and_eval_items_use_only_their_sides_scans_and_answers_are_the_sums(tmp_path):
    images, labels = load_scans()
    train_scans, eval_scans = (set(s) for s in split_scans(labels))
    train = _records(build_digits(tmp_path, 300, 0, "train"))
    held = _records(build_digits(tmp_path, 100, 0, "eval"))
    used_train = {s for r in train for s in r["meta"]["scans"]}
    used_eval = {s for r in held for s in r["meta"]["scans"]}
    assert used_train <= train_scans and used_eval <= eval_scans and not used_train & used_eval
    for record in train + held:
        left, right = (labels[s] for s in record["meta"]["scans"])
        assert record["meta"]["digits"] == [left, right] and record["answer"] == str(left + right)
        assert record["task"] == "number" and record["prompt"] == "What is the sum of the two digits?"
    assert len({r["answer"] for r in train}) >= 15  # sums 0..18: no single answer to learn


def test_the_picture_is_the_two_scans_upscaled_side_by_side(tmp_path):
    images, _ = load_scans()
    record = _records(build_digits(tmp_path, 1, 3, "train", image_size=24))[0]
    picture = np.asarray(Image.open(tmp_path / record["images"][0]).convert("L"), dtype=float)
    assert picture.shape == (24, 48) and record["image_size"] == [48, 24]
    for half, scan in zip((picture[:, :24], picture[:, 24:]), record["meta"]["scans"]):
        cells = half.reshape(8, 3, 8, 3)  # each source pixel is a 3x3 block
        assert (cells == cells[:, :1, :, :1]).all()
        np.testing.assert_allclose(cells[:, 0, :, 0], np.round(255 - images[scan] * 255 / 16), atol=0)


def test_cot_targets_short_and_long_are_scored_right_and_a_wrong_sum_is_not(tmp_path):
    records = _records(build_digits(tmp_path, 4, 1, "train", cot="mixed"))
    assert [r["meta"]["cot"] for r in records] == ["short", "long", "short", "long"]
    short, long = records[0]["response"], records[1]["response"]
    assert short.startswith("<think> ") and "digit is" not in short
    assert "The left digit is" in long and len(long) > len(short) + 30
    answers, tasks = [r["answer"] for r in records], [r["task"] for r in records]
    assert accuracy_reward([r["response"] for r in records], answer=answers, task=tasks) == [1.0] * 4
    wrong = [f"<answer> {int(a) + 1} </answer>" for a in answers]
    assert accuracy_reward(wrong, answer=answers, task=tasks) == [0.0] * 4
    larger = _records(build_digits(tmp_path / "l", 2, 1, "train", question="larger", cot="long"))
    assert all(r["answer"] == str(max(r["meta"]["digits"])) for r in larger)


def test_the_same_seed_writes_the_same_bytes_and_another_seed_other_pairs(tmp_path):
    a, b = build_digits(tmp_path / "a", 6, 0, "train"), build_digits(tmp_path / "b", 6, 0, "train")
    assert a.read_bytes() == b.read_bytes()
    assert (tmp_path / "a/images/train-sum-000005.png").read_bytes() == (
        tmp_path / "b/images/train-sum-000005.png"
    ).read_bytes()
    other = build_digits(tmp_path / "c", 6, 1, "train")
    assert [r["meta"]["scans"] for r in _records(other)] != [r["meta"]["scans"] for r in _records(a)]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("n", 0, "argument 'n' must be an integer from 1 to 1000000 (got '0')"),
        ("n", "ten", "argument 'n' must be an integer from 1 to 1000000 (got 'ten')"),
        ("eval_n", -1, "argument 'eval_n' must be an integer from 0 to 1000000"),
        ("image_size", 100000, "argument 'image_size' must be an integer from 8 to 1024"),
        ("image_size", 2.5, "argument 'image_size' must be an integer"),
        ("seed", -1, "argument 'seed' must be an integer from 0 to"),
        ("seed", 2**40, "argument 'seed' must be an integer from 0 to"),
        ("question", "difference", "argument 'question' must be one of"),
        ("cot", "medium", "argument 'cot' must be one of"),
        ("out", None, "argument 'out'"),
        ("digits", 3, "unknown argument 'digits'"),
    ],
)
def test_bad_arguments_are_one_line_naming_the_field(field, value, message, tmp_path):
    given = {"out": str(tmp_path), field: value}
    if value is None:
        del given[field]
    with pytest.raises(UserError) as err:
        check_args("digits", _args, given, "step data")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_command_line_refuses_in_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["build-data", "digits", "--n", "-3", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'n' must be an integer from 1" in err[0] and not out.exists()
    assert main(["build-data", "digits", "--n", "2", "--image-size", "16", "--out", str(out)]) == 0
    assert main(["build-data", "digits", "--n", "2", "--out", str(out)]) == 2  # a folder with data: --overwrite
    assert "already holds data" in capsys.readouterr().err


def test_a_missing_scikit_learn_is_one_line_saying_what_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import fails as if not installed
    with pytest.raises(UserError, match=r"needs scikit-learn, which is not installed: pip install 'mmrl\[digits\]'"):
        load_scans()
    assert main(["build-data", "digits", "--n", "2", "--out", str(tmp_path / "x")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_mc_and_yes_no_forms_for_a_curriculum_are_right_and_scored(tmp_path):
    records = _records(build_digits(tmp_path, 60, 2, "train", forms=("open", "mc", "yes_no")))
    assert [r["task"] for r in records[:3]] == ["number", "mc", "yes_no"]
    for r in records:
        gold = r["meta"]["open_answer"]
        assert gold == str(sum(r["meta"]["digits"]))
        if r["task"] == "mc":
            assert len(set(r["choices"])) == 4 and r["choices"]["ABCD".index(r["answer"])] == gold
            assert all(0 <= int(c) <= 18 for c in r["choices"])
            assert f"{r['answer']}. {gold}\n" in r["prompt"]
        if r["task"] == "yes_no":
            proposed = r["prompt"].split("Proposed answer: ")[1].split(".")[0]
            assert r["answer"] == ("yes" if proposed == gold else "no")
    yes_no = [r["answer"] for r in records if r["task"] == "yes_no"]
    assert 5 <= yes_no.count("yes") <= 15  # even odds over 20 items, not all one answer
    columns = {k: [r.get(k) for r in records] for k in ("answer", "task", "choices")}
    assert accuracy_reward([r["response"] for r in records], **columns) == [1.0] * 60


@pytest.mark.parametrize("forms", ["open,essay", ",", "mc;yes_no"])
def test_unknown_forms_are_refused_before_anything_is_written(tmp_path, capsys, forms):
    out = tmp_path / "d"
    assert main(["build-data", "digits", "--n", "2", "--forms", forms, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--forms: each of open, mc, yes_no" in err[0] and not (out / "train.jsonl").exists()


def test_the_reading_question_asks_for_the_left_then_the_right_digit(tmp_path):
    """`--question read`: the cold start's reading stage, one digit per item, left and right alternating."""
    records = _records(build_digits(tmp_path, 40, 0, "train", question="read", forms=("open",)))
    assert [r["prompt"] for r in records[:2]] == ["Which digit is on the left?", "Which digit is on the right?"]
    for i, r in enumerate(records):
        side = ("left", "right")[i % 2]
        digit = r["meta"]["digits"][i % 2]
        assert (r["answer"], r["meta"]["question"], r["task"]) == (str(digit), side, "number")
        assert r["response"] == f"<think> The {side} digit is {digit}. </think><answer> {digit} </answer>"
    assert len({r["answer"] for r in records}) >= 8
    columns = {k: [r[k] for r in records] for k in ("answer", "task")}
    assert accuracy_reward([r["response"] for r in records], **columns) == [1.0] * 40
