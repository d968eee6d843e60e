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


def test_over_seeds_gives_the_speedup_and_the_accuracy_difference_with_t_intervals(tmp_path):
    bench = _bench()
    # last half of 4 steps = steps 3-4
    acc = {"sync": [0.0, 0.0, 0.5, 0.7], "async": [0.0, 0.0, 0.4, 0.6]}
    runs = {}
    for name, values in acc.items():
        rows = [{"step": i + 1, "accuracy": a} for i, a in enumerate(values)]
        runs[name] = bench.last_half_accuracy(_write(tmp_path / name, rows))
    assert runs == {"sync": pytest.approx(0.6), "async": pytest.approx(0.5)}

    per_seed = {
        seed: {
            "sync": {"samples_per_s": 10.0, "last_half_accuracy": 0.5},
            "async": {"samples_per_s": 10.0 * ratio, "last_half_accuracy": 0.5 + diff},
        }
        for seed, ratio, diff in [(0, 1.1, -0.1), (1, 1.2, 0.1), (2, 1.15, 0.0)]
    }
    figures = bench.over_seeds(per_seed)
    assert figures["speedup"] == pytest.approx((1.1 * 1.2 * 1.15) ** (1 / 3), abs=1e-6)  # the geometric mean
    low, high = figures["speedup_ci95"]
    assert 1 < low < figures["speedup"] < high  # t(2) = 4.303 on the log ratios: all three above 1 and close
    assert figures["speedup_verdict"] == "async faster"
    assert figures["accuracy_diff"] == pytest.approx(0.0, abs=1e-9)
    # mean 0, sd 0.1, n 3: half-width 4.303 * 0.1 / sqrt(3)
    assert figures["accuracy_diff_ci95"] == pytest.approx([-0.248434, 0.248434], abs=1e-5)
    assert figures["accuracy_diff_verdict"] == "not distinguishable"
    one = bench.over_seeds({0: per_seed[0]})
    assert one["speedup_ci95"] == [None, None] and one["speedup_verdict"] == "one seed: no interval"


def test_bad_seeds_are_one_line(capsys):
    assert _bench().main(["--seeds", "0,x"]) == 2
    assert "--seeds must be distinct integers" in capsys.readouterr().out
    assert _bench().main(["--seeds", "1,1"]) == 2
