"""The seeds aggregation of `mmrl pipeline`: spread over seeds with missing values, the per-seed overrides, and the
checks of the `seeds:` list."""

from __future__ import annotations

import math

import pytest

from mmrl.errors import UserError
from mmrl.pipeline.seeds import aggregate, check_seeds, seed_overrides, seeds_table, spread


def test_spread_skips_missing_and_non_finite_values_but_keeps_them_listed():
    out = spread([0.5, None, float("nan"), 0.7, 0.9])
    assert out["n"] == 3 and out["mean"] == pytest.approx(0.7) and out["std"] == pytest.approx(0.2)
    assert (out["min"], out["max"]) == (0.5, 0.9)
    assert len(out["values"]) == 5  # what each seed gave, failures included
    assert spread([0.25])["std"] == 0.0
    empty = spread([None, None])
    assert empty["mean"] is None and empty["n"] == 0


def test_seed_overrides_come_last_so_they_win(tmp_path):
    out = seed_overrides(["trainer.seed=7", "seeds=[0,1]"], tmp_path, 3)
    assert out[:2] == ["trainer.seed=7", "seeds=[0,1]"]
    assert out[2:] == ["seeds=[]", "trainer.seed=3", f"output_dir={tmp_path / 'seed-3'}"]


@pytest.mark.parametrize("seeds, message", [([0, 2, 2], r"seeds \[2\] are listed twice"), ([0, -1], ">= 0")])
def test_bad_seed_lists_are_refused(seeds, message):
    with pytest.raises(UserError, match=message):
        check_seeds("x.yaml", seeds)


def _seed_summary(acc_a, acc_b, seconds):
    def evaluation(label, acc):
        return {"kind": "eval", "seconds": 1.0, "outputs": {"label": label},
                "metrics": {"accuracy": acc, "n": 10, "completion_length": 12.0}}
    return {"accuracy": {"a": acc_a, "b": acc_b}, "seconds": seconds,
            "steps": {"eval_a": evaluation("a", acc_a), "eval_b": evaluation("b", acc_b),
                      "arm": {"kind": "train", "seconds": seconds, "outputs": {"run_dir": "/nonexistent/run"},
                              "metrics": {"accuracy": 0.5, "completion_length/incorrect": math.nan}}}}


def test_aggregate_keeps_an_arm_whose_eval_failed_on_one_seed():
    summary = aggregate({0: _seed_summary(0.4, 0.6, 10.0), 1: _seed_summary(0.5, None, 20.0)}, 31.0)
    assert summary["seeds"] == [0, 1]
    assert summary["arms"]["a"]["accuracy"]["mean"] == pytest.approx(0.45)
    assert summary["arms"]["b"]["accuracy"]["n"] == 1 and summary["arms"]["b"]["accuracy"]["values"] == [0.6, None]
    arm = summary["train"]["arm"]
    assert arm["seconds"]["mean"] == pytest.approx(15.0)
    assert arm["sampled_tokens"]["n"] == 0  # no metrics.jsonl on disk: unknown, not 0 tokens
    assert arm["final"]["completion_length/incorrect"]["mean"] is None
    assert "| b | 0.600 ± 0.000 | 0.600, - |" in seeds_table(summary)
    assert summary["seconds"] == 30.0  # compute of both seeds


def test_trend_averages_each_runs_first_and_last_steps_that_logged_the_metric(tmp_path):
    import json

    def run(values):  # one seed's metrics.jsonl; None: that step had no incorrect completion (metric absent)
        path = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        path.mkdir()
        rows = [{"step": i + 1, "accuracy": 0.5, **({} if v is None else {"completion_length/incorrect": v})}
                for i, v in enumerate(values)]
        # written out of order: the trend follows the step numbers, not the file's order
        (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reversed(rows)))
        return str(path)

    def seed(run_dir):
        return {"accuracy": {}, "seconds": 1.0,
                "steps": {"arm": {"kind": "train", "seconds": 1.0, "outputs": {"run_dir": run_dir}, "metrics": {}}}}

    long_run = run([10, 10, 10, 10, 10, None, 11, 12, 20, 20, 20, 20, 20])
    short_run = run([4, None, 6])  # fewer than 5 steps: both ends are its whole curve
    trend = aggregate({0: seed(long_run), 1: seed(short_run)}, 2.0)["train"]["arm"]["trend"]
    incorrect = trend["completion_length/incorrect"]
    assert incorrect["first"]["values"] == [10.0, 5.0] and incorrect["last"]["values"] == [20.0, 5.0]
    assert incorrect["last"]["mean"] == pytest.approx(12.5)
    assert trend["accuracy"]["first"]["values"] == [0.5, 0.5]
