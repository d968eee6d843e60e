"""Stage schedule: switches at the right step, overrides fall back to the base config, exact resume mid-stage."""

from __future__ import annotations

import json

import pytest

from mmrl.config import load_config
from mmrl.errors import ConfigError, UserError
from mmrl.rl.stages import StageSchedule

TWO_STAGES = (
    "stages=[{name: short, steps: 3, group_size: 4, max_completion_length: 32, prompt_suffix: ' Be brief.',"
    " rewards: [{name: accuracy, weight: 1.0}], data: [{path: easy.jsonl}]},"
    " {name: long, steps: 4, max_completion_length: 128}]"
)


def _config(*overrides: str):
    return load_config(
        None, ["rollout.group_size=8", "rollout.max_completion_length=64", "data.train=base.jsonl", *overrides]
    )


def _run(schedule: StageSchedule, start: int, stop: int, evals: dict[int, dict] | None = None) -> list[tuple]:
    """Mimic the trainer loop: ask the stage for each step, then advance (with eval metrics where given)."""
    seen = []
    for step in range(start, stop):
        stage = schedule.stage_at(step)
        seen.append((step, stage.index, stage.name, stage.group_size, stage.max_completion_length))
        schedule.advance(step + 1, (evals or {}).get(step + 1))
    return seen


def test_two_stages_switch_at_the_right_step_and_resolve_overrides():
    cfg = _config(TWO_STAGES)
    assert cfg.trainer.max_steps == 7  # derived: 3 + 4
    schedule = StageSchedule(cfg.stages, cfg)
    names = [schedule.stage_at(s).name for s in range(7)]
    assert names == ["short"] * 3 + ["long"] * 4
    first, second = schedule.stage_at(0), schedule.stage_at(3)
    assert (first.start_step, first.end_step, second.start_step, second.end_step) == (0, 3, 3, 7)
    assert (first.group_size, first.max_completion_length, first.prompt_suffix) == (4, 32, " Be brief.")
    assert [r.name for r in first.rewards] == ["accuracy"] and first.data[0].path == "easy.jsonl"
    # Stage 2 overrides only the length: the rest falls back to the base config.
    assert (second.group_size, second.max_completion_length, second.prompt_suffix) == (8, 128, None)
    assert [r.name for r in second.rewards] == ["accuracy", "format"] and second.data[0].path == "base.jsonl"
    assert cfg.rollout.group_size == 8  # resolving a stage leaves the base config alone
    switched = [schedule.advance(step) for step in range(1, 8)]
    assert switched == [False, False, True, False, False, False, False]
    assert schedule.boundaries() == [(0, "short"), (3, "long")]
    assert schedule.stage_at(5).metrics() == {"stage": 1, "stage_name": "long"}
    assert schedule.finished(7) and not schedule.finished(6)


def test_resume_inside_stage_two_reproduces_the_straight_run():
    cfg = _config(TWO_STAGES)
    straight = _run(StageSchedule(cfg.stages, cfg), 0, 7)

    first = StageSchedule(cfg.stages, cfg)
    part1 = _run(first, 0, 5)  # stop inside stage 2 (step 5 of 7), as a checkpoint would
    state = json.loads(json.dumps(first.state_dict()))  # goes through a JSON trainer-state file
    resumed = StageSchedule(cfg.stages, cfg)
    resumed.load_state_dict(state)
    assert resumed.stage_at(5).name == "long"
    assert part1 + _run(resumed, 5, 7) == straight


def test_until_metric_switches_early_and_resume_keeps_the_moved_boundary():
    cfg = _config("stages=[{name: a, steps: 10, until_metric: accuracy, until_value: 0.8}, {name: b, steps: 3}]")
    evals = {2: {"eval/accuracy": 0.5}, 4: {"eval/accuracy": 0.85}}
    schedule = StageSchedule(cfg.stages, cfg)
    seen = _run(schedule, 0, 7, evals)
    assert [name for _, _, name, _, _ in seen] == ["a"] * 4 + ["b"] * 3
    assert schedule.boundaries() == [(0, "a"), (4, "b")]
    assert schedule.total_steps == 7 and schedule.finished(7)  # the run is shorter than the planned 13 steps

    # A resume from step 5 (inside b) must keep the early boundary, which the config alone cannot tell.
    part = StageSchedule(cfg.stages, cfg)
    head = _run(part, 0, 5, evals)
    resumed = StageSchedule(cfg.stages, cfg)
    resumed.load_state_dict(part.state_dict())
    assert head + _run(resumed, 5, 7, evals) == seen
    fresh = StageSchedule(cfg.stages, cfg)
    assert fresh.stage_at(5).name == "a"  # without the state, step 5 would wrongly be stage a


def test_until_metric_min_mode_and_early_end_of_the_last_stage():
    cfg = _config("stages=[{name: only, steps: 10, until_metric: loss, until_value: 0.1, until_mode: min}]")
    schedule = StageSchedule(cfg.stages, cfg)
    assert not schedule.advance(3, {"loss": 0.5})
    schedule.advance(4, {"loss": 0.05})
    assert schedule.total_steps == 4 and schedule.finished(4)


def test_no_stages_gives_one_implicit_stage_and_disabled_stages_are_skipped():
    cfg = _config("trainer.max_steps=5")
    schedule = StageSchedule(cfg.stages, cfg)
    stage = schedule.stage_at(4)
    assert (stage.index, stage.name, stage.end_step, stage.group_size) == (0, "main", 5, 8)
    cfg = _config("stages=[{name: a, steps: 2}, {name: skip, steps: 5, enabled: false}, {name: c, steps: 2}]")
    assert cfg.trainer.max_steps == 4
    schedule = StageSchedule(cfg.stages, cfg)
    assert [schedule.stage_at(s).name for s in range(4)] == ["a", "a", "c", "c"]


def test_bad_state_and_bad_config_are_user_errors():
    cfg = _config(TWO_STAGES)
    schedule = StageSchedule(cfg.stages, cfg)
    other = _config("stages=[{name: x, steps: 7}]")
    with pytest.raises(UserError, match="differ from the config"):
        schedule.load_state_dict(StageSchedule(other.stages, other).state_dict())
    with pytest.raises(ConfigError, match="until_metric and until_value"):
        _config("stages=[{name: x, steps: 2, until_metric: accuracy}]")


def test_an_eval_at_a_planned_boundary_does_not_skip_the_stage_just_entered():
    cfg = _config(
        "stages=[{name: a, steps: 2}, {name: b, steps: 3, until_metric: accuracy, until_value: 0.5},"
        " {name: c, steps: 2}]"
    )
    schedule = StageSchedule(cfg.stages, cfg)
    seen = _run(schedule, 0, 5, {2: {"accuracy": 0.9}, 3: {"accuracy": 0.9}})
    # The eval at step 2 measured stage a's model: b still runs (one step) and ends at the eval after step 3.
    assert [name for _, _, name, _, _ in seen] == ["a", "a", "b", "c", "c"]
    assert schedule.boundaries() == [(0, "a"), (2, "b"), (3, "c")] and schedule.total_steps == 5


def test_reset_optimizer_restarts_the_schedule_at_its_warmup_for_each_reset_stage():
    """Stages 3 + 3 (+ 2 without a reset), warm-up 2, linear decay: hand-computed factors per step. Each part between
    resets warms up again from its own start; a stage without reset_optimizer continues its part's schedule."""
    import torch

    from mmrl.optim import build_scheduler

    cfg = _config(
        "stages=[{name: a, steps: 3}, {name: b, steps: 3, reset_optimizer: true}, {name: c, steps: 2}]",
        "optimizer.lr=1.0",
        "optimizer.warmup_steps=2",
        "optimizer.schedule=linear",
    )
    schedule = StageSchedule(cfg.stages, cfg)
    assert [schedule.resets_at(s) for s in range(8)] == [False, False, False, True, False, False, False, False]
    assert [schedule.lr_segment(s) for s in (0, 2, 3, 7)] == [(0, 3), (0, 3), (3, 5), (3, 5)]
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, cfg.optimizer, lambda: schedule.total_steps, segment=schedule.lr_segment)
    rates = []
    for step in range(8):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # no gradient: nothing moves; the scheduler is stepped after it, as in training
        schedule.advance(step + 1)
        scheduler.step()
    # part 1 (3 steps): warm-up 1/2, 2/2, then linear over 1 step from 1.0; part 2 (5 steps): 1/2, 1, then 1 - k/3
    assert rates == pytest.approx([0.5, 1.0, 1.0, 0.5, 1.0, 1.0, 2 / 3, 1 / 3])


def test_reset_optimizer_on_the_first_stage_resets_nothing():
    cfg = _config("stages=[{name: a, steps: 2, reset_optimizer: true}, {name: b, steps: 2}]")
    schedule = StageSchedule(cfg.stages, cfg)
    assert not any(schedule.resets_at(s) for s in range(4)) and schedule.lr_segment(3) == (0, 4)


def test_the_sampled_token_budget_ends_the_run_in_any_stage_and_survives_a_resume():
    cfg = _config(TWO_STAGES, "trainer.max_sampled_tokens=250")
    schedule = StageSchedule(cfg.stages, cfg)
    ended = []
    for step in range(1, 8):
        schedule.advance(step)
        ended.append(schedule.count_tokens(100))
        if schedule.finished(step):
            break
    assert ended == [False, False, True] and schedule.finished(3)  # the loop went on after steps 1 and 2
    assert schedule.stage_at(2).name == "short" and schedule.total_steps == 7  # the plan, for the LR schedule
    again = StageSchedule(cfg.stages, cfg)
    again.load_state_dict(json.loads(json.dumps(schedule.state_dict())))
    assert again.finished(3) and again.sampled_tokens == 300
    # resumed with a larger budget, or none, the run goes on from there (it stopped, silently, at the old end)
    for budget in ("trainer.max_sampled_tokens=500", "trainer.max_steps=7"):
        more = _config(TWO_STAGES, budget)
        later = StageSchedule(more.stages, more)
        later.load_state_dict(json.loads(json.dumps(schedule.state_dict())))
        assert not later.finished(3) and later.sampled_tokens == 300
    # no budget: tokens are counted, nothing ends early
    plain = StageSchedule(_config(TWO_STAGES).stages, _config(TWO_STAGES))
    assert not any(plain.count_tokens(10**9) for _ in range(3)) and not plain.finished(6)


def test_a_checkpoint_from_before_token_counting_is_refused_with_a_budget():
    cfg = _config(TWO_STAGES, "trainer.max_sampled_tokens=250")
    old = {"version": 1, "names": ["short", "long"], "starts": [0], "ended_at": None, "step": 2}
    with pytest.raises(UserError, match="before mmrl counted sampled tokens.*resume without it"):
        StageSchedule(cfg.stages, cfg).load_state_dict(old)
    plain = StageSchedule(_config(TWO_STAGES).stages, _config(TWO_STAGES))
    plain.load_state_dict(old)  # without a budget the count is only a metric: it starts from 0
    assert plain.sampled_tokens == 0


@pytest.mark.parametrize("value", ["0", "-5", "1.5", "abc", "true"])
def test_a_bad_sampled_token_budget_is_refused_naming_the_field(value):
    with pytest.raises(ConfigError, match=r"trainer\.max_sampled_tokens must be"):
        _config(f"trainer.max_sampled_tokens={value}")
