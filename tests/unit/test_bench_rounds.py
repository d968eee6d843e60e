"""The benchmarks' shared rounds and physical-bound helpers (benchmarks/_common.py), on given run results."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks._common import MatmulRates, Rounds, bound_fraction, pool  # noqa: E402


def result(seconds: float, completions: int = 16, loss: float = 0.5) -> dict:
    return {"seconds": seconds, "completions": completions, "completion_tokens": 4.0 * completions, "steps": 2,
            "phases": {"generate": seconds / 2}, "counts": {"vision_calls": 2}, "loss": [loss], "prompt_tokens": 30.0}


def test_rounds_alternate_which_side_goes_first():
    rounds = Rounds("mmrl", "trl")
    assert [rounds.order(i) for i in range(3)] == [["mmrl", "trl"], ["trl", "mmrl"], ["mmrl", "trl"]]


def test_the_last_line_is_the_median_round_ratio_and_the_pooled_one_adds_up_the_runs():
    rounds = Rounds("mmrl", "trl")
    # each round's samples/s ratio: 4.0, 2.0, 2.5 (median 2.5)
    rounds.add({"mmrl": result(0.5), "trl": result(2.0)})
    rounds.add({"trl": result(1.0), "mmrl": result(0.5)})
    rounds.add({"mmrl": result(1.0), "trl": result(2.5)})
    assert rounds.ratios == pytest.approx([4.0, 2.0, 2.5])
    pooled = rounds.pooled["mmrl"]
    assert (pooled["seconds"], pooled["completions"], pooled["steps"]) == (2.0, 48, 6)
    assert pooled["phases"] == {"generate": 1.0} and pooled["counts"] == {"vision_calls": 6}
    assert pooled["loss"] == [0.5, 0.5, 0.5]
    # pooled samples/s: mmrl 48 / 2.0 s = 24, trl 48 / 5.5 s -> 2.75, not the median of the rounds
    assert rounds.report("speedup_vs_trl") == ["# speedup per round: 4.000, 2.000, 2.500; pooled 2.750",
                                               "speedup_vs_trl=2.500"]


def test_one_round_prints_only_the_ratio_and_one_side_prints_nothing():
    one = Rounds("mmrl", "trl")
    one.add({"mmrl": result(1.0), "trl": result(4.0)})
    assert one.report("speedup_vs_trl") == ["speedup_vs_trl=4.000"]
    only = Rounds("mmrl", "trl")
    only.add({"mmrl": result(1.0)})
    only.add({"mmrl": result(2.0)})
    assert only.ratios == [] and only.report("speedup_vs_trl") == []
    assert only.pooled["mmrl"]["seconds"] == 3.0


def test_pool_keeps_a_phase_or_counter_that_only_one_run_saw():
    a, b = result(1.0), result(2.0)
    b["counts"] = {"vision_calls": 1, "images_encoded": 5}
    assert pool(a, b)["counts"] == {"vision_calls": 3, "images_encoded": 5}


def test_matmul_rates_gather_every_sample_and_give_median_and_best():
    rates = MatmulRates("cpu")
    rates.sample()
    rates.sample()
    assert len(rates.rates) == 30 and all(r > 0 for r in rates.rates)
    assert min(rates.rates) <= rates.median <= rates.best == max(rates.rates)
    assert "over 30 timings" in rates.describe("fp32")


def test_bound_fraction_is_the_bound_over_the_measured_step():
    # 10 GFLOP of useful work at 50 GFLOP/s is a 0.2 s bound; a 0.8 s step reaches a quarter of it
    assert bound_fraction(10e9, 50e9, 0.8) == pytest.approx(0.25)
