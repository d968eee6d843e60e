"""The async benchmark's figures from its arms' metrics rows (no benchmark run: the rows are given here)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_async_rollout", ROOT / "benchmarks" / "async_rollout.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _write(run: Path, rows: list[dict]) -> Path:
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return run


def test_samples_per_s_is_the_whole_runs_rate_and_the_curve_averages_blocks(tmp_path):
    # equal completions per step: 2 s and 6 s steps after a 100 s warm-up step -> 2 steps in 8 s of 16 each = 4/s
    rows = [
        {"step": 1, "samples_per_s": 0.16, "reward/total": 0.0, "accuracy": 0.0},
        {"step": 2, "samples_per_s": 8.0, "reward/total": 0.5, "accuracy": 0.25},
        {"step": 3, "samples_per_s": 16 / 6, "reward/total": 1.0, "accuracy": 0.75},
    ]
    summary = _bench()._summary(_write(tmp_path / "sync", rows), warmup=1, block=2)
    assert summary["samples_per_s"] == pytest.approx(4.0)  # not the mean of the rates (5.33)
    assert summary["curve"] == [
        {"steps": "1-2", "reward": 0.25, "accuracy": 0.125},
        {"steps": "3-3", "reward": 1.0, "accuracy": 0.75},
    ]
    assert "mean_staleness" not in summary


def test_the_async_arm_reports_its_staleness_and_effective_sample_size(tmp_path):
    rows = [
        {"step": s, "samples_per_s": 1.0, "reward/total": 0.0, "async/staleness": st, "rollout/is_ess": ess}
        for s, st, ess in [(1, 0, 1.0), (2, 1, 0.9), (3, 1, 0.8)]
    ]
    summary = _bench()._summary(_write(tmp_path / "async", rows), warmup=0, block=3)
    assert summary["mean_staleness"] == pytest.approx(2 / 3)
    assert summary["mean_is_ess"] == pytest.approx(0.9)


def test_bad_arguments_are_one_line(capsys):
    assert _bench().main(["--steps", "2", "--warmup", "2"]) == 2
    assert "--steps (2) must exceed --warmup (2)" in capsys.readouterr().out


def test_a_group_of_one_is_refused_in_one_line(capsys):
    assert _bench().main(["--group-size", "1"]) == 2
    assert "--group-size must be >= 2" in capsys.readouterr().out
