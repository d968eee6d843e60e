"""What a user types after `mmrl COMMAND CONFIG`: overrides after an option, a trainer.output_dir that `mmrl pipeline`
would ignore, a seeds list with a repeated seed, and a reader that stops reading (`| head`)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mmrl.cli import main

REPRO = "configs/repro/ptst.yaml"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_overrides_after_an_option_are_overrides(tmp_path, capsys):
    # `mmrl pipeline CONFIG --plan seeds=[1]` stopped with "unrecognized arguments: seeds=[1]"
    assert main(["pipeline", REPRO, f"output_dir={tmp_path}", "--plan", "seeds=[1]"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"pipeline repro_ptst: seeds [1], each into {tmp_path}/seed-<seed>/")
    assert "== seed 0" not in out
    # the overrides before the option and after it keep their order: the later one wins
    assert main(["config", "show", "configs/tests/grpo_tiny.yaml", "trainer.max_steps=3", "--doc",
                 "trainer.max_steps=5"]) == 0
    assert "max_steps: 5" in capsys.readouterr().out


@pytest.mark.parametrize("extra", ["--no-such-option", "other.yaml"])
def test_what_is_not_an_override_after_an_option_is_still_refused(capsys, extra):
    with pytest.raises(SystemExit) as stop:
        main(["pipeline", REPRO, "--plan", extra])
    assert stop.value.code == 2
    assert f"unrecognized arguments: {extra}" in capsys.readouterr().err


@pytest.mark.parametrize("override", ["trainer.output_dir=runs/mine", "trainer={output_dir: runs/mine}"])
def test_pipeline_refuses_a_trainer_output_dir_it_would_ignore(capsys, override):
    # each step runs in <output_dir>/<step>/: the run went to runs/quickstart, on top of a finished quickstart
    assert main(["pipeline", "configs/quickstart.yaml", override, "--plan"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mmrl pipeline: error: command line: trainer.output_dir=runs/mine is not read by `mmrl pipeline` "
                   "(each step runs in <output_dir>/<step name>/, here runs/quickstart/<step name>/); set "
                   "output_dir=runs/mine instead"]


def test_a_seed_repeated_on_the_command_line_is_blamed_on_the_command_line(capsys):
    assert main(["pipeline", REPRO, "seeds=[0, 0]", "--plan"]) == 2
    assert capsys.readouterr().err.startswith("mmrl pipeline: error: command line: seeds [0] are listed twice")


@pytest.mark.parametrize("unbuffered", ["1", ""])
def test_a_reader_that_stops_reading_ends_the_command_without_a_traceback(unbuffered):
    # `mmrl pipeline CONFIG --plan | head -1` printed a BrokenPipeError traceback
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line is written
    env = {**os.environ, "PYTHONUNBUFFERED": unbuffered}
    try:
        done = subprocess.run([sys.executable, "-m", "mmrl", "pipeline", REPRO, "--plan"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env, timeout=120)
    finally:
        os.close(write_end)
    assert done.stderr == "" and done.returncode == 141
