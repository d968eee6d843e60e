"""The claims of a seeded pipeline: per-seed paired differences, the 95% interval (paired t and bootstrap), the
verdict rule, the measures read from each seed's summary and metrics.jsonl, and the config checks — hand-computed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from mmrl.config.workflow import ClaimConfig
from mmrl.errors import UserError
from mmrl.workflow.claims import bootstrap_interval, claims_table, evaluate_claim, paired_t_interval, verdict
from mmrl.workflow.seeds import aggregate


def _seed(acc_arm, acc_base, run_dir: Path | None = None, rows=(), seconds=10.0):
    """One seed's summary.json content: eval labels `arm` and `base`, a train step `rl` whose metrics.jsonl holds
    `rows`."""
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def evaluation(label, acc):
        return {
            "kind": "eval",
            "seconds": 1.0,
            "outputs": {"label": label},
            "metrics": {"accuracy": acc, "n": 100, "completion_length": 20.0},
        }

    return {
        "accuracy": {"arm": acc_arm, "base": acc_base},
        "seconds": seconds,
        "steps": {
            "eval_arm": evaluation("arm", acc_arm),
            "eval_base": evaluation("base", acc_base),
            "rl": {"kind": "train", "seconds": seconds, "outputs": {"run_dir": str(run_dir)}, "metrics": {}},
        },
    }


def _claim(**fields) -> ClaimConfig:
    return ClaimConfig(
        **{"name": "c", "arm": "eval.arm.accuracy", "baseline": "eval.base.accuracy", "direction": "greater", **fields}
    )


def test_paired_t_interval_and_verdict_by_hand():
    # differences 0.2, 0.2, 0.3, 0.1: mean 0.2, sd sqrt(0.02 / 3), t(0.975, 3) = 3.182 -> 0.2 +- 0.129904
    per_seed = {s: _seed(a, b) for s, (a, b) in enumerate([(0.6, 0.4), (0.7, 0.5), (0.8, 0.5), (0.5, 0.4)])}
    out = evaluate_claim(_claim(), per_seed)
    half = 3.182 * math.sqrt(0.02 / 3) / 2
    assert out["n"] == 4 and out["difference"] == pytest.approx(0.2)
    assert out["interval"] == pytest.approx([0.2 - half, 0.2 + half], abs=1e-6)
    assert out["verdict"] == "reproduced" and out["per_seed"]["2"]["difference"] == pytest.approx(0.3)
    assert evaluate_claim(_claim(direction="less"), per_seed)["verdict"] == "opposite"
    # swapped arms: the interval is below 0, which is what a paper saying "less" predicts
    swapped = evaluate_claim(_claim(arm="eval.base.accuracy", baseline="eval.arm.accuracy", direction="less"), per_seed)
    assert swapped["verdict"] == "reproduced" and swapped["interval"][1] < 0


def test_a_measure_a_million_times_smaller_keeps_its_interval_and_verdict():
    # accuracy per sampled token is ~1e-5: rounded to 6 decimals its differences and interval were 0 (the first digits
    # run's PTST claim showed "-0.00 [-3, +2] per million tokens"); scaled by 1e-6 the claim must read the same
    pairs = [(0.6, 0.4), (0.7, 0.5), (0.8, 0.5), (0.5, 0.4)]
    big = evaluate_claim(_claim(), {s: _seed(a, b) for s, (a, b) in enumerate(pairs)})
    small = evaluate_claim(_claim(), {s: _seed(a * 1e-6, b * 1e-6) for s, (a, b) in enumerate(pairs)})
    assert small["verdict"] == big["verdict"] == "reproduced"
    assert small["difference"] == pytest.approx(big["difference"] * 1e-6, rel=1e-5)
    assert small["interval"] == pytest.approx([x * 1e-6 for x in big["interval"]], rel=1e-5)
    assert small["per_seed"]["2"]["difference"] == pytest.approx(0.3e-6, rel=1e-9)
    assert bootstrap_interval([1e-7, 3e-7])[1:] == pytest.approx((1e-7, 3e-7), rel=1e-5)


def test_an_interval_that_holds_or_touches_zero_is_not_distinguishable():
    per_seed = {0: _seed(0.5, 0.4), 1: _seed(0.4, 0.5)}  # differences +0.1 and -0.1
    out = evaluate_claim(_claim(), per_seed)
    assert out["difference"] == pytest.approx(0.0) and out["interval"][0] < 0 < out["interval"][1]
    assert out["verdict"] == "not distinguishable"
    assert verdict((0.0, 0.3), "greater") == verdict((-0.3, 0.0), "less") == "not distinguishable"
    assert verdict((-0.3, -0.1), "greater") == "opposite"


def test_bootstrap_by_hand():
    assert bootstrap_interval([0.0, 1.0]) == (0.5, 0.0, 1.0)  # means 0 / 0.5 / 1 with chances 1/4, 1/2, 1/4
    assert bootstrap_interval([0.25] * 3) == (0.25, 0.25, 0.25)
    mean, low, high = bootstrap_interval([0.1, 0.2, 0.3, 0.4, 0.5])
    assert mean == pytest.approx(0.3) and 0.1 < low < 0.3 < high < 0.5
    per_seed = {s: _seed(0.5 + d, 0.5) for s, d in enumerate([0.1, 0.1, 0.1])}
    out = evaluate_claim(_claim(interval="bootstrap"), per_seed)
    assert out["interval"] == pytest.approx([0.1, 0.1]) and out["verdict"] == "reproduced"
    assert paired_t_interval([0.1, 0.1, 0.1])[1:] == pytest.approx((0.1, 0.1))


def test_one_seed_or_a_missing_arm_gives_no_interval(tmp_path):
    out = evaluate_claim(_claim(), {0: _seed(0.9, 0.1), 1: _seed(None, 0.2)})
    assert out["n"] == 1 and out["interval"] is None and out["verdict"] == "not distinguishable"
    assert out["difference"] == pytest.approx(0.8) and "fewer than 2 seeds" in out["note"]
    assert out["per_seed"]["1"] == {"arm": None, "baseline": 0.2, "difference": None}


def test_train_measures_windows_and_ratios_from_metrics_jsonl(tmp_path):
    # 7 logged steps: incorrect lengths 1..7 (step 4 had no incorrect completion: NaN, skipped), 100 tokens a step
    rows = [
        {"step": k, "completion_tokens": 100, "completion_length/incorrect": float(k) if k != 4 else math.nan}
        for k in range(1, 8)
    ]
    per_seed = {s: _seed(0.5 + 0.1 * s, 0.5, tmp_path / f"s{s}", rows, seconds=20.0 + s) for s in range(2)}
    windows = {
        w: evaluate_claim(
            _claim(arm=f"train.rl.{w}.completion_length/incorrect", baseline="eval.base.accuracy"), per_seed
        )["per_seed"]["0"]["arm"]
        for w in ("first", "last", "mean")
    }
    # values 1, 2, 3, 5, 6, 7: first five mean 17 / 5, last five 23 / 5, all 24 / 6
    assert windows == pytest.approx({"first": 3.4, "last": 4.6, "mean": 4.0})
    per_token = evaluate_claim(
        _claim(
            arm="eval.arm.accuracy / train.rl.sampled_tokens", baseline="eval.base.accuracy / train.rl.sampled_tokens"
        ),
        per_seed,
    )
    assert per_token["per_seed"]["1"]["arm"] == pytest.approx(0.6 / 700)
    assert per_token["per_seed"]["1"]["difference"] == pytest.approx(0.1 / 700)
    seconds = evaluate_claim(_claim(arm="train.rl.seconds", baseline="eval.base.accuracy"), per_seed)
    assert [r["arm"] for r in seconds["per_seed"].values()] == [20.0, 21.0]


def test_aggregate_writes_the_claims_and_the_table_shows_them():
    per_seed = {s: _seed(a, b) for s, (a, b) in enumerate([(0.6, 0.4), (0.7, 0.5), (0.8, 0.5)])}
    summary = aggregate(per_seed, 1.0, [_claim(name="curriculum_helps", paper="Curr-ReFT: stages help")])
    claim = summary["claims"]["curriculum_helps"]
    assert claim["verdict"] == "reproduced" and claim["paper"] == "Curr-ReFT: stages help" and claim["level"] == 0.95
    table = claims_table(summary["claims"])
    assert "| curriculum_helps | arm > baseline | 0.2333 |" in table and "reproduced" in table
    assert "claims" not in aggregate(per_seed, 1.0)


PIPELINE = {
    "name": "x",
    "seeds": [0, 1],
    "model": {"name_or_path": "tiny"},
    "pipeline": [
        {"name": "data", "kind": "build-data", "args": {"builder": "synthetic", "n": 4}},
        {"name": "rl", "kind": "train"},
        {"name": "eval_rl", "kind": "eval", "args": {"label": "rl"}},
    ],
}


@pytest.mark.parametrize(
    ("claim", "message"),
    [
        ({"arm": "eval.nope.accuracy"}, "claims.0 ('c'): arm 'eval.nope.accuracy': no eval step labelled 'nope'"),
        ({"baseline": "eval.rl.reward"}, "baseline 'eval.rl.reward': an eval measure is one of accuracy"),
        ({"arm": "train.sft.seconds"}, "no train or sft step 'sft'"),
        ({"arm": "train.rl.middle.accuracy"}, "a train measure is seconds | sampled_tokens or <first|last|mean>"),
        ({"arm": "eval.rl.accuracy / train.rl.seconds / train.rl.seconds"}, "a ratio 'A / B' of two"),
        ({"arm": "accuracy"}, "a measure is eval.<label>.<quantity> or train.<step>.<quantity>"),
    ],
)
def test_a_claim_naming_what_the_pipeline_lacks_is_refused_at_load(tmp_path, claim, message):
    from mmrl.workflow import load_plan

    config = {
        **PIPELINE,
        "claims": [
            {"name": "c", "arm": "eval.rl.accuracy", "baseline": "eval.rl.accuracy", "direction": "greater", **claim}
        ],
    }
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(UserError) as err:
        load_plan(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_bad_direction_and_a_duplicate_name_are_refused(tmp_path):
    from mmrl.errors import ConfigError
    from mmrl.workflow import load_plan

    claim = {"name": "c", "arm": "eval.rl.accuracy", "baseline": "eval.rl.accuracy", "direction": "greater"}
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump({**PIPELINE, "claims": [claim, claim]}))
    with pytest.raises(UserError, match=r"claims.1 \('c'\): duplicate claim name"):
        load_plan(path)
    path.write_text(yaml.safe_dump({**PIPELINE, "claims": [{**claim, "direction": "bigger"}]}))
    with pytest.raises(ConfigError, match="direction"):
        load_plan(path)
