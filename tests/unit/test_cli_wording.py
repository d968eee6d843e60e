"""User-facing wording: a bare `mmrl demo` says which demos there are (no internal tracker wording); a run's checkpoint is
evaluated into that run's eval/."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from mmrl.cli import main
from mmrl.commands.evaluate import build_eval_config, default_out_dir

INTERNAL = re.compile(r"\bissue\b|\bhelper\b|\bTODO\b|\bnot implemented\b", re.IGNORECASE)


def test_demo_speaks_to_users(capsys):
    assert main(["demo"]) == 2
    err = capsys.readouterr().err
    assert "chat, grounding, gui, rewards, runs" in err and "mmrl demo rewards" in err
    assert not INTERNAL.search(err), err
    try:
        main(["demo", "--help"])
    except SystemExit:
        pass
    assert not INTERNAL.search(capsys.readouterr().out)


def _args(**kw):
    base = {"config": None, "overrides": [], "model": None, "data": None, "k": None, "limit": None, "out": None}
    return argparse.Namespace(**{**base, **kw})


def test_eval_of_a_runs_checkpoint_lands_in_that_run(tmp_path):
    checkpoint = tmp_path / "runs/r/checkpoints/step-4"
    checkpoint.mkdir(parents=True)
    (checkpoint / "config.json").write_text("{}")
    args = _args(model=str(checkpoint), data=["data/synth/eval.jsonl"])
    cfg, config = build_eval_config(args)
    assert default_out_dir(cfg, config, args) == tmp_path / "runs/r/eval/step-4-eval"
    args = _args(model="tiny", data=["data/synth/eval.jsonl"])  # not a run: the shared runs/eval/
    cfg, config = build_eval_config(args)
    assert default_out_dir(cfg, config, args) == Path("runs/eval/tiny-eval")


def test_evals_with_other_settings_of_one_checkpoint_keep_their_own_reports(tmp_path):
    # a 10-item pass@8 went into runs/r/eval/step-4-eval too, replacing the full greedy report without a word
    checkpoint = tmp_path / "runs/r/checkpoints/step-4"
    checkpoint.mkdir(parents=True)
    (checkpoint / "config.json").write_text("{}")
    sampled = _args(
        model=str(checkpoint),
        data=["data/synth/eval.jsonl"],
        k=8,
        limit=10,
        overrides=["eval.greedy=false", "eval.temperature=0.7"],
    )
    cfg, config = build_eval_config(sampled)
    assert default_out_dir(cfg, config, sampled) == tmp_path / "runs/r/eval/step-4-eval-k8-t0.7-first10"
    first = _args(model="tiny", data=["data/synth/eval.jsonl"], limit=20)
    cfg, config = build_eval_config(first)
    assert default_out_dir(cfg, config, first) == Path("runs/eval/tiny-eval-first20")
