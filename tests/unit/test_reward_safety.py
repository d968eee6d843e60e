"""Rewards under threads, timeouts, user code, the composite, the CLI, and the docstring examples."""

from __future__ import annotations

import doctest
import importlib
import json
import threading
import time
from pathlib import Path

import pytest

from mmrl.errors import UserError
from mmrl.rewards import get_reward, list_rewards, register_reward
from mmrl.rewards.composite import RewardComposite
from mmrl.rewards.safe import call_with_timeout

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "rewards"
USER = f"{FIX / 'user_reward.py'}:length_bonus"
STALLS = f"{FIX / 'user_reward.py'}:stalls"


def _in_thread(fn):
    box, errors = [], []

    def target():
        try:
            box.append(fn())
        except BaseException as err:  # noqa: BLE001 - the test reports whatever escaped
            errors.append(err)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(60)
    assert not errors, errors
    return box[0]


def test_accuracy_from_worker_thread_uses_no_signal():
    got = _in_thread(lambda: get_reward("accuracy")(["<answer>\\frac{1}{3}</answer>"], answer=["1/3"], task=["math"]))
    assert got == [1.0]


def test_call_with_timeout_off_main_thread_and_in_main_thread():
    def spin():
        while True:
            pass

    start = time.monotonic()
    assert call_with_timeout(spin, 0.3).status == "timeout"  # main thread: interval timer
    assert _in_thread(lambda: call_with_timeout(spin, 0.3)).status == "timeout"  # worker thread: abandoned daemon
    assert time.monotonic() - start < 5
    assert call_with_timeout(lambda: 1 / 0, 1).status == "error"


@pytest.mark.parametrize("from_thread", [False, True])
def test_hung_verifier_times_out_in_bounded_time_and_pool_recovers(from_thread):
    completions = ["C-STALL", "2", "3"]  # the first hangs in one C call: its worker must be killed
    columns = {"answer": ["1", "2", "2"]}
    with RewardComposite([{"name": STALLS, "timeout_s": 1.0}], workers=1) as rc:
        start = time.monotonic()
        result = _in_thread(lambda: rc.score(completions, columns)) if from_thread else rc.score(completions, columns)
        elapsed = time.monotonic() - start
        assert result.components[STALLS] == [0.0, 1.0, 0.0]  # the gold is fine, so the timeout is the completion's
        assert result.counters == {f"{STALLS}/timeouts": 1}
        assert result.examples[STALLS]["index"] == 0 and result.examples[STALLS]["kind"] == "timeouts"
        assert elapsed < 20
        processes = [w.process for w in rc._pool._workers]
        assert rc.score(["2"], {"answer": ["2"]}).total == [1.0]
    assert all(not p.is_alive() for p in processes)  # closed: no leaked workers


def test_user_reward_from_file_in_process_pool_and_cli(tmp_path, capsys):
    fn = get_reward(USER)
    assert fn(["0123456789", "01234"]) == [1.0, 0.5]
    with RewardComposite([{"name": USER, "kwargs": {"target": 5}}], workers=1) as rc:
        assert rc.score(["01234", "0123456789"], {}).components[USER] == [1.0, 0.0]
    with pytest.raises(UserError, match="has no function"):
        get_reward(f"{FIX / 'user_reward.py'}:missing")
    with pytest.raises(UserError, match="does not exist"):
        get_reward("nowhere/reward.py:fn")


def test_registry_rejects_duplicates_and_lists_valid_names():
    with pytest.raises(ValueError, match="already registered"):
        register_reward("format")(lambda completions, **_: [0.0] * len(completions))
    with pytest.raises(UserError, match="Did you mean 'accuracy'.*format_lenient"):
        get_reward("acuracy")
    assert {"format", "accuracy", "iou", "gui_action", "overlong", "curr_reft_open"} <= set(list_rewards())


def test_composite_total_components_counters():
    specs = [{"name": "accuracy", "weight": 1.0}, {"name": "format", "weight": 0.5}, {"name": "format_lenient", "weight": 0}]
    with RewardComposite(specs, workers=0) as rc:
        r = rc.score(
            ["<think>a</think><answer>4</answer>", "<answer>4</answer>", "<think>a</think><answer>4</answer>"],
            {"answer": ["4", "4", "not a number"], "task": ["count"] * 3, "id": ["s1", "s2", "s3"]},
        )
    assert r.components["accuracy"] == [1.0, 1.0, None]
    assert r.components["format"] == [1.0, 0.0, 1.0]
    assert r.total == [1.5, 1.0, None]  # None when a weighted component is None
    assert r.counters == {"accuracy/unscorable": 1}
    assert r.examples["accuracy"]["id"] == "s3"
    with pytest.raises(UserError, match="listed twice"):
        RewardComposite([{"name": "format"}, {"name": "format"}])
    with pytest.raises(UserError, match="unknown reward"):
        RewardComposite([{"name": "nope"}])


def test_composite_isolates_a_crashing_cheap_reward_item(tmp_path):
    def fragile(completions, **_):
        return [1.0 / len(c) for c in completions]  # ZeroDivisionError on an empty completion

    fragile.mmrl_heavy = False
    rc = RewardComposite([{"name": "iou"}], workers=0)
    rc.fns, rc.targets = [fragile], [None]
    r = rc.score(["ab", ""], {})
    assert r.components["iou"] == [0.5, None] and r.counters == {"iou/errors": 1}


def test_gui_action_dast_shaping_per_group():
    click = {"action_type": "click", "bbox": [0, 0, 10, 10]}
    good = "<think>r</think><answer>[{'action': 'click', 'coordinate': [5, 5]}]</answer>"
    got = get_reward("gui_action")([good, good], answer=[click, click], dast=True, completion_length=[100, 300],
                                   group_id=[0, 0])  # fmt: skip
    assert got == pytest.approx([3.75, 3.25])  # budget 200: lam -0.5 -> 0.75, lam 0.5 -> 0.25


def test_cli_reward_score(tmp_path, capsys):
    from mmrl.cli import main

    data = tmp_path / "c.jsonl"
    rows = [
        {"completion": "<think>r</think><answer>\\frac{1}{2}</answer>", "answer": "0.5", "task": "math"},
        {"completion": "<think>r</think><answer>[0, 0, 50, 50]</answer>", "answer": [0, 0, 100, 100],
         "task": "grounding", "image_size": [200, 200], "input_size": [100, 100]},
        {"completion": "<answer>3</answer>", "answer": "forty two", "task": "math"},
    ]  # fmt: skip
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert main(["reward", "score", "--reward", "accuracy", "--reward", "format=0.5", "--input", str(data),
                 "--workers", "0"]) == 0  # fmt: skip
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert out == [
        {"line": 1, "total": 1.5, "accuracy": 1.0, "format": 1.0},
        {"line": 2, "total": 1.5, "accuracy": 1.0, "format": 1.0},
        {"line": 3, "total": None, "accuracy": None, "format": 0.0},
        {"summary": {"items": 3, "total": {"mean": 1.5, "none": 1, "errors": 0, "timeouts": 0},
                     "accuracy": {"mean": 1.0, "none": 1, "errors": 0, "timeouts": 0},
                     "format": {"mean": 2 / 3, "none": 0, "errors": 0, "timeouts": 0}}},
    ]  # fmt: skip
    assert main(["reward", "score", "--reward", USER, "--kwargs", '{"target": 18}', "--input", str(data)]) == 0
    third = json.loads(capsys.readouterr().out.splitlines()[2])
    assert third == {"line": 3, "total": 1.0, USER: 1.0}
    assert main(["reward", "score", "--reward", "nope", "--input", str(data)]) == 2
    assert "unknown reward 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "module",
    ["extraction", "parsing", "format", "accuracy", "grounding", "gui", "length", "curr_reft", "registry", "composite",
     "limits"],
)
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(f"mmrl.rewards.{module}"))
    assert result.failed == 0 and result.attempted > 0


def test_every_registered_reward_has_a_docstring_example():
    for name in list_rewards():
        fn = get_reward(name)
        module_doc = importlib.import_module(fn.__module__).__doc__ or ""
        assert ">>>" in (fn.__doc__ or "") or (">>>" in module_doc and fn.__name__ in module_doc), name


# ---------------------------------------------------------------- user rewards: whole batches, bugs are errors
# The call log's path is written into the reward file: reward workers are forks of a server process started by an
# earlier test, so an environment variable set now would not reach them.
BATCH_LOG = '''def judge(completions, answer, **_):
    with open(LOG, "a") as log:
        log.write(f"{len(completions)}\\n")
    return [float(c == str(a)) for c, a in zip(completions, answer)]


def broken(completions, **_):
    raise RuntimeError("judge endpoint unreachable")
'''


@pytest.mark.parametrize("workers", [0, 1])
def test_user_rewards_get_whole_batches(tmp_path, workers):
    # Review: a "batched" user reward was called once per item (an LLM judge could not batch its requests).
    (tmp_path / "judge.py").write_text(f"LOG = {str(tmp_path / 'calls')!r}\n" + BATCH_LOG)
    with RewardComposite([{"name": f"{tmp_path / 'judge.py'}:judge"}], workers=workers) as rc:
        result = rc.score(["1", "2", "x", "4", "5"], {"answer": ["1", "2", "3", "4", "5"]})
    assert result.total == [1.0, 1.0, 0.0, 1.0, 1.0]
    assert (tmp_path / "calls").read_text().split() == ["5"]  # one call, the whole batch


def test_reward_score_exits_1_when_a_reward_raised_on_some_items(tmp_path, capsys):
    # Review: a user reward raising on 4 of 8 items exited 0 (the error counted, the exit status clean).
    from mmrl.cli import main

    (tmp_path / "judge.py").write_text("def odd(completions, **_):\n"
                                       "    return [1.0 if c != 'x' else 1 / 0 for c in completions]\n")
    data = tmp_path / "c.jsonl"
    data.write_text("".join(json.dumps({"completion": c, "answer": "1"}) + "\n" for c in ("1", "x", "1")))
    code = main(["reward", "score", "--reward", f"{tmp_path / 'judge.py'}:odd", "--input", str(data)])
    captured = capsys.readouterr()
    assert code == 1, captured.err
    assert len(captured.out.splitlines()) == 4  # the 3 items and the summary are printed all the same
    assert "ZeroDivisionError" in captured.err and "raised: '" in captured.err and "exit status 1" in captured.err


def test_reward_score_stops_on_a_reward_that_raises_on_every_item(tmp_path, capsys):
    # Review: every item None and exit 0 (a bug counted as bad gold), while `mmrl train` refuses the same reward.
    from mmrl.cli import main

    (tmp_path / "judge.py").write_text("LOG = None\n" + BATCH_LOG)
    data = tmp_path / "c.jsonl"
    data.write_text("".join(json.dumps({"completion": c, "answer": "1"}) + "\n" for c in ("1", "2")))
    assert main(["reward", "score", "--reward", f"{tmp_path / 'judge.py'}:broken", "--input", str(data)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "raised on every item (RuntimeError: judge endpoint unreachable, first at line 1)" in captured.err
