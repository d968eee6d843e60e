"""A mistyped option, subcommand or choice on any `mmrl` command line: one line on stderr that names the command the
user typed (not `mmrl`), a did-you-mean for a near option, exit 2, no usage block and no traceback."""

from __future__ import annotations

import pytest

from mmrl.cli import main

CASES = [
    (
        ["eval", "--modle", "tiny", "--data", "x.jsonl"],
        "mmrl eval: error: unrecognized arguments: --modle",
        "did you mean '--model'?",
    ),
    (
        ["pipeline", "configs/quickstart.yaml", "--plna"],
        "mmrl pipeline: error: unrecognized arguments: --plna",
        "did you mean '--plan'?",
    ),
    (
        ["data", "show", "x.jsonl", "--limt", "3"],
        "mmrl data show: error: unrecognized arguments: --limt 3",
        "did you mean '--limit'?",
    ),
    (["serve", "--model", "tiny", "--prot", "8001"], "mmrl serve: error: unrecognized arguments", "'--port'"),
    (["plot", "runs/x", "--ot", "/tmp/p"], "mmrl plot: error: unrecognized arguments: --ot", "'--out'"),
    (["trian", "configs/tests/grpo_tiny.yaml"], "mmrl: error: argument COMMAND: invalid choice: 'trian'", "'train'"),
    (
        ["model", "build-tiny", "/tmp/t", "--preset", "tinyy"],
        "mmrl model build-tiny: error: argument --preset",
        "'tiny'",
    ),
    (
        ["reward", "score", "--input", "x.jsonl"],
        "mmrl reward score: error: the following arguments are required",
        "--reward",
    ),
]


@pytest.mark.parametrize(("argv", "head", "hint"), CASES, ids=[" ".join(c[0][:2]) for c in CASES])
def test_a_typo_is_one_line_naming_the_command(argv, head, hint, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "usage:" not in err and "Traceback" not in err, err
    assert err.startswith(head), err
    assert hint in err, err
    assert f"see `{head.split(': error')[0]} --help`" in err
