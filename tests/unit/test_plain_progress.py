"""Plain progress lines (output to a file): the first step, every 5%, the last step, each printed once."""

from __future__ import annotations

from mmrl.runs.logger import PlainProgress


def test_the_last_step_logged_twice_prints_one_line(capsys):
    progress = PlainProgress(40)
    for step in range(1, 41):
        progress.update(step, {"loss": 0.5})
    progress.update(40, {"loss": 0.4})  # the same step again with nothing new to show
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0] for line in lines] == [f"train: step {s}/40" for s in [1, *range(2, 41, 2)]]
    progress.update(40, {"accuracy": 0.75})  # ... with a figure its line did not show: printed, not lost
    assert capsys.readouterr().err.strip().endswith("accuracy 0.75")


def test_a_resumed_run_starts_its_lines_at_its_own_first_step(capsys):
    progress = PlainProgress(10, start_step=6, label="eval", unit="item")
    for step in (7, 7, 8, 9, 10, 10):
        progress.update(step)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0] for line in lines] == ["eval: item 7/10", "eval: item 8/10", "eval: item 9/10",
                                                      "eval: item 10/10"]


def test_item_progress_off_a_terminal_prints_plain_lines_and_takes_a_postfix(capsys):
    from mmrl.runs.logger import item_progress

    bar = item_progress(3, "rejection")  # capsys's stderr is no terminal: a log file's case
    for _ in range(3):
        bar.update(1)
        bar.set_postfix(failed=0, refresh=False)
    bar.close()
    err = capsys.readouterr().err
    assert "\r" not in err and [line.split(" (")[0] for line in err.splitlines()] == [
        "rejection: item 1/3", "rejection: item 2/3", "rejection: item 3/3"]
    assert err.splitlines()[-1].endswith(", failed 0")  # tqdm's postfix, kept in the plain lines
    empty = item_progress(0, "eval")  # nothing to do: no division by zero
    empty.update(0)
    empty.close()
    capsys.readouterr()
    quiet = item_progress(3, "eval", enabled=False)
    quiet.update(3)
    quiet.close()
    assert capsys.readouterr().err == ""
