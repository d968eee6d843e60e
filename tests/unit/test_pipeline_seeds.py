"""The seeds aggregation of `mmrl pipeline`: spread over seeds with missing values, the per-seed overrides, and the
checks of the `seeds:` list."""

from __future__ import annotations

import math
import re

import pytest

from mmrl.errors import UserError
from mmrl.workflow.plan import check_seeds
from mmrl.workflow.seeds import aggregate, seed_overrides, seeds_table, spread


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
    assert out[2:4] == ["seeds=[]", "trainer.seed=3"] and out[4].startswith("output_dir=")


@pytest.mark.parametrize("name", ["a #1", "b: c", "&x y", "it's \"q\" é"])
def test_each_seed_gets_its_own_directory_whatever_the_output_dir_is_called(tmp_path, name):
    # the seed's output_dir override is read as YAML: unquoted, "<root>/a #1/seed-0" lost everything after " #",
    # and every seed wrote into the same "<root>/a"
    from mmrl.workflow import load_plan

    root = tmp_path / name
    for seed in (0, 1):
        assert load_plan(REPRO, seed_overrides([], root, seed)).root == root / f"seed-{seed}"


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
    # the short run's two ends are the same steps: the count says so
    assert incorrect["logged_steps"] == [12, 2] and trend["accuracy"]["logged_steps"] == [13, 3]
    assert trend["accuracy"]["first"]["values"] == [0.5, 0.5]


REPRO = "configs/repro/ptst.yaml"


@pytest.mark.parametrize("override, message", [
    ("seeds=[4294967296]", r"command line: seeds\.0 must be <= 4294967295 \(got 4294967296\)"),
    ("seeds=[0, 18446744073709551616]", r"seeds\.1 must be <= 4294967295"),
    ("trainer.seed=4294967296", r"trainer\.seed must be <= 4294967295"),
])
def test_seed_beyond_numpys_range_is_refused_at_load_not_at_the_first_training_step(tmp_path, capsys, override,
                                                                                   message):
    # numpy's global seed takes 0 .. 2**32 - 1: a larger one passed validation, built the data, then crashed the sft
    # step with a traceback
    from mmrl.cli import main

    # a model that does not exist: were the seed accepted, the run would stop at the sft step, not train
    code = main(["pipeline", REPRO, override, f"output_dir={tmp_path / 'run'}", "model.name_or_path=/no/such/model"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert re.search(message, err), err
    assert not (tmp_path / "run").exists()  # refused before any step ran


def test_the_largest_seed_numpy_takes_is_accepted(tmp_path):
    from mmrl.workflow import load_plan

    plan = load_plan(REPRO, ["seeds=[4294967295]", f"output_dir={tmp_path}"])
    assert plan.config.seeds == [4294967295]


def test_a_bool_in_the_seeds_list_is_refused():
    from mmrl.errors import ConfigError
    from mmrl.workflow import load_plan

    with pytest.raises(ConfigError, match=r"seeds\[0\] must be an integer, not true/false"):
        load_plan(REPRO, ["seeds=[true]"])


@pytest.mark.parametrize("override", ["trainer.seed=7", 'trainer={"seed": 7, "max_steps": 1}'])
def test_trainer_seed_on_the_command_line_with_a_seeds_list_is_refused_not_silently_replaced(tmp_path, override):
    # each seed's run sets trainer.seed=<seed> last: the user's 7 would vanish without a word
    from mmrl.workflow import load_plan

    with pytest.raises(UserError, match=r"^command line: trainer\.seed=7 would be replaced .*seeds=\[7\]"):
        load_plan(REPRO, [override, f"output_dir={tmp_path}"])
    assert load_plan(REPRO, [override, "seeds=[]"]).config.trainer.seed == 7  # one run: it is the run's seed
    assert load_plan(REPRO, ["seeds=[7]"]).config.seeds == [7]


def test_a_step_overriding_trainer_seed_under_a_seeds_list_is_refused(tmp_path):
    # that step would train with seed 3 on every seed of the sweep: a spread of 0 that is not the training's
    from mmrl.workflow import load_plan

    with pytest.raises(UserError, match=r"ptst\.yaml: pipeline\.4 \('ptst'\) overrides trainer\.seed"):
        load_plan(REPRO, ["pipeline.4.overrides.trainer.seed=3", f"output_dir={tmp_path}"])


def test_a_step_overriding_its_output_dir_under_a_seeds_list_is_refused(tmp_path):
    # every seed would train that step in one directory: seed 1 would resume seed 0's finished run (0 new steps) and
    # report its results as its own
    from mmrl.workflow import load_plan

    with pytest.raises(UserError, match=r"pipeline\.6 \('fixed'\) overrides trainer\.output_dir, so every seed"):
        load_plan(REPRO, [f"pipeline.6.overrides.trainer.output_dir={tmp_path / 'shared'}", f"output_dir={tmp_path}"])
    assert load_plan(REPRO, [f"pipeline.6.overrides.trainer.output_dir={tmp_path / 'shared'}", "seeds=[]"])


def test_plan_of_a_seeds_pipeline_shows_each_seeds_steps(tmp_path, capsys):
    # the steps of a seeds pipeline live in <output_dir>/seed-<seed>/: --plan looked in <output_dir>/ and said
    # "to run" for every step of a finished sweep
    from mmrl.cli import main
    from mmrl.workflow import load_plan
    from mmrl.workflow.runner import _write_done

    root = tmp_path / "run"
    one = load_plan(REPRO, seed_overrides([f"output_dir={root}"], root, 1))
    _write_done(one.step_dir(one.steps[0]), {"finished_at": "2026-01-01T00:00:00+00:00"})
    assert main(["pipeline", REPRO, f"output_dir={root}", "seeds=[0, 1]", "--plan"]) == 0
    out = capsys.readouterr().out
    seed0, seed1 = out.split("== seed 1")
    assert "step 1/8 read_data [build-data]: to run" in seed0 and str(root / "seed-0") in seed0
    assert "step 1/8 read_data [build-data]: done 2026-01-01" in seed1 and "step 2/8 data [build-data]: to run" in seed1


def test_summary_png_keeps_the_training_curves_when_no_arm_has_an_accuracy(tmp_path):
    # every eval failed (accuracy None on every seed): the plot was skipped, curves and all
    from mmrl.workflow.seeds import plot_seeds

    summary = aggregate({0: _seed_summary(None, None, 10.0)}, 10.0)
    summary["curves"] = {"arm": {"accuracy": {"step": [1, 2, 3], "mean": [0.1, 0.2, 0.3]},
                                 "completion_length/incorrect": {"step": [], "mean": []}}}
    assert summary["arms"]["a"]["accuracy"]["mean"] is None
    assert plot_seeds(summary, tmp_path / "summary.png") == tmp_path / "summary.png"
    assert (tmp_path / "summary.png").stat().st_size > 0
    summary["curves"] = {"arm": {"accuracy": {"step": [], "mean": []}}}
    assert plot_seeds(summary, tmp_path / "nothing.png") is None and not (tmp_path / "nothing.png").exists()


@pytest.mark.parametrize("override, got", [("seeds=0", "0"), ("seeds=0,1", "'0,1'"), ("seeds=", "''"),
                                           ("seeds=null", "None")])
def test_a_seeds_value_that_is_not_a_list_says_how_to_write_one(override, got):
    from mmrl.errors import ConfigError
    from mmrl.workflow import load_plan

    with pytest.raises(ConfigError) as err:
        load_plan(REPRO, [override])
    assert str(err.value) == f"command line: seeds must be a list, written [a, b] ([] for an empty one) (got {got})"


@pytest.mark.parametrize("override, value", [("output_dir=/runs/a #1", "'/runs/a'"), ("seeds=[0, 1] # two", "[0, 1]")])
def test_an_override_whose_value_yaml_would_cut_at_a_comment_is_refused(override, value):
    # `output_dir=runs/exp #2` silently became runs/exp (another run's directory)
    from mmrl.config.loader import parse_override
    from mmrl.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"starts a YAML comment, so the value would be {re.escape(value)}; quote"):
        parse_override(override)
    assert parse_override('output_dir="/runs/a #1"') == (["output_dir"], "/runs/a #1")
    assert parse_override("output_dir=/runs/a#1") == (["output_dir"], "/runs/a#1")  # no space: not a comment


@pytest.mark.parametrize("command", ["train", "sft"])
def test_a_seeds_list_given_to_train_or_sft_is_refused_not_ignored(tmp_path, capsys, command):
    # one run with trainer.seed would have started, the list silently ignored
    from mmrl.cli import main

    code = main([command, "configs/tests/grpo_tiny.yaml", "seeds=[0, 1]", f"trainer.output_dir={tmp_path / 'run'}",
                 "model.name_or_path=/no/such/model"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0] == (f"mmrl {command}: error: command line: seeds=[0, 1] is read only by `mmrl pipeline` (a run per "
                      f"seed); `mmrl {command}` makes one run: set trainer.seed=N, or loop over seeds in the shell")


def test_a_finished_steps_marker_is_the_same_step_only_when_its_settings_text_is(tmp_path):
    # markers written before claims/seeds left the settings: the same step again without those keys, but `false`
    # and `0` (or 1 and 1.0) stay different settings, as the chat template renders them differently
    import json

    from mmrl.config import MMRLConfig
    from mmrl.config.workflow import ClaimConfig, PipelineStep
    from mmrl.runs.segments import check_resume_config, save_segment_config
    from mmrl.workflow.plan import config_digest, same_settings, step_settings

    step = PipelineStep(name="grpo", kind="train")
    config = MMRLConfig.model_validate({"data": {"chat_template_kwargs": {"enable_thinking": False}}})
    old = {"config_digest": "0" * 16, "settings": {**step_settings(config, step), "claims": [], "seeds": [0]}}
    old = json.loads(json.dumps(old))  # as read back from DONE.json
    assert same_settings(old, config_digest(config, step))
    for changed in (0, None, "false"):
        other = MMRLConfig.model_validate({"data": {"chat_template_kwargs": {"enable_thinking": changed}}})
        assert not same_settings(old, config_digest(other, step)), changed
    assert not same_settings({"config_digest": "1" * 16, "settings": step_settings(config, step)},
                             config_digest(config, step))  # no sweep key and no settings now: the digest decides
    # with the settings now, the kept settings decide (the digest is theirs; an older mmrl's lacks fields added since)
    assert same_settings({"config_digest": "1" * 16, "settings": step_settings(config, step)},
                         config_digest(config, step), step_settings(config, step))
    other = MMRLConfig.model_validate({"data": {"chat_template_kwargs": {"enable_thinking": 0}}})
    assert not same_settings({"config_digest": "1" * 16, "settings": step_settings(config, step)},
                             config_digest(other, step), step_settings(other, step))
    assert not same_settings({"settings": None}, config_digest(config, step))
    # an interrupted trained step resumes under a config that only gained a claim
    run = tmp_path / "run"
    save_segment_config(config, run, 0)
    (run / "checkpoints" / "step-5").mkdir(parents=True)
    claim = ClaimConfig(name="c", arm="eval.a.accuracy", baseline="eval.b.accuracy", direction="greater")
    check_resume_config(config.model_copy(update={"claims": [claim], "seeds": [0, 1]}), run,
                        run / "checkpoints" / "step-5")
