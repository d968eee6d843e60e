"""Stage schedule: PTST and curricula as a list of stages that override data, G, length, rewards and prompt suffix.

Step convention: `step` is the number of training steps completed so far (GRPO: rollout steps, each
making num_iterations x mini_batches optimizer steps; see `trainer.max_steps`), so the step being run is `step` (0-based)
and a stage covers `[start_step, end_step)`. The trainer asks `stage_at(step)` before each step and calls
`advance(step + 1, eval_metrics)` after it (with the eval metrics when it evaluated at that step).

A stage ends after its `steps`, or earlier when `until_metric` reaches `until_value`. Early switches move every later
boundary, so the state records the actual start step of each stage entered; `state_dict()` / `load_state_dict()` make a
resume mid-stage continue exactly. With `trainer.max_sampled_tokens`, the run ends at the step whose completions bring
the count (`count_tokens`) to the budget, in whatever stage.

>>> from mmrl.config import load_config
>>> cfg = load_config(None, ["stages=[{name: warmup, steps: 2, group_size: 4}, {name: main, steps: 3}]"])
>>> schedule = StageSchedule(cfg.stages, cfg)
>>> [(s.name, s.group_size) for s in (schedule.stage_at(1), schedule.stage_at(2))]
[('warmup', 4), ('main', 8)]
>>> schedule.total_steps
5
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mmrl.config.data import DatasetSpec
from mmrl.config.rl import RewardSpec
from mmrl.config.schema import MMRLConfig
from mmrl.config.workflow import StageConfig
from mmrl.errors import UserError

STATE_VERSION = 1


@dataclass(frozen=True)
class ResolvedStage:
    """One stage with every override resolved against the base config (what the trainer uses for a step)."""

    index: int  # position among the enabled stages
    name: str
    start_step: int  # first step of the stage (actual for stages already entered, planned otherwise)
    end_step: int  # one past the last step (planned: start + steps)
    group_size: int
    max_completion_length: int
    rewards: tuple[RewardSpec, ...]
    data: tuple[DatasetSpec, ...]
    prompt_suffix: str | None
    reset_optimizer: bool = False  # a later stage that starts with a fresh optimizer and schedule

    @property
    def steps(self) -> int:
        return self.end_step - self.start_step

    def metrics(self) -> dict[str, Any]:
        return {"stage": self.index, "stage_name": self.name}


def _implicit_stage(base: MMRLConfig) -> StageConfig:
    return StageConfig(name="main", steps=max(1, base.trainer.max_steps))


class StageSchedule:
    """The enabled stages of `stages`, or one implicit stage from `base` when none are configured."""

    def __init__(self, stages: list[StageConfig] | None, base: MMRLConfig):
        active = [s for s in (stages or []) if s.enabled]
        if stages and not active:
            raise UserError("stages: every stage is disabled; enable at least one")
        self.base = base
        self.stages: list[StageConfig] = active or [_implicit_stage(base)]
        # Actual start step of every stage entered so far (stage 0 starts at 0).
        self._starts: list[int] = [0]
        # Step at which an early stop of the last stage ended the run (None: it runs its full length).
        self._ended_at: int | None = None
        self._step = 0
        self.sampled_tokens = 0  # completion tokens trained on so far (trainer.max_sampled_tokens)

    # ---- queries -----------------------------------------------------------------------------------------------
    def _all_starts(self) -> list[int]:
        """Start step of every stage: recorded ones, then planned from the last recorded start."""
        starts = list(self._starts)
        while len(starts) < len(self.stages):
            prev = len(starts) - 1
            starts.append(starts[prev] + self.stages[prev].steps)
        return starts

    def _end_of(self, index: int, starts: list[int]) -> int:
        if index + 1 < len(self._starts):  # a later stage was entered: this one ended there
            return starts[index + 1]
        planned = starts[index] + self.stages[index].steps
        if index == len(self.stages) - 1 and self._ended_at is not None:
            return min(planned, self._ended_at)
        return planned

    def _resolve(self, index: int, starts: list[int]) -> ResolvedStage:
        stage, base = self.stages[index], self.base
        return ResolvedStage(
            index=index,
            name=stage.name,
            start_step=starts[index],
            end_step=self._end_of(index, starts),
            group_size=stage.group_size if stage.group_size is not None else base.rollout.group_size,
            max_completion_length=(
                stage.max_completion_length
                if stage.max_completion_length is not None
                else base.rollout.max_completion_length
            ),
            rewards=tuple(stage.rewards if stage.rewards is not None else base.rewards),
            data=tuple(stage.data if stage.data is not None else base.data.train),
            prompt_suffix=stage.prompt_suffix if stage.prompt_suffix is not None else base.data.prompt_suffix,
            reset_optimizer=index > 0 and stage.reset_optimizer,
        )

    def _index_at(self, step: int, starts: list[int]) -> int:
        index = 0
        for i, start in enumerate(starts):
            if start <= step:
                index = i
        return index

    def stage_at(self, step: int) -> ResolvedStage:
        """The stage that runs step `step` (0-based). Steps past the end belong to the last stage."""
        if step < 0:
            raise ValueError(f"step must be >= 0 (got {step})")
        starts = self._all_starts()
        return self._resolve(self._index_at(step, starts), starts)

    @property
    def total_steps(self) -> int:
        """Planned run length given the switches so far (an upper bound while early switches may still happen)."""
        starts = self._all_starts()
        return self._end_of(len(self.stages) - 1, starts)

    def resets_at(self, step: int) -> bool:
        """True when step `step` is the first of a stage that starts with a fresh optimizer (`reset_optimizer`)."""
        stage = self.stage_at(step)
        return stage.reset_optimizer and stage.start_step == step

    def lr_segment(self, step: int) -> tuple[int, int]:
        """(first step, length) of the learning-rate schedule that holds `step`: the run from 0, or from the start
        of the last stage with `reset_optimizer` at or before it, to the next such stage or the run's end.

        >>> from mmrl.config import load_config
        >>> cfg = load_config(None, ["stages=[{name: a, steps: 2}, {name: b, steps: 3, reset_optimizer: true}]"])
        >>> schedule = StageSchedule(cfg.stages, cfg)
        >>> [schedule.lr_segment(s) for s in (1, 2, 4)]
        [(0, 2), (2, 3), (2, 3)]
        """
        starts = self._all_starts()
        resets = [0] + [starts[i] for i in range(1, len(self.stages)) if self.stages[i].reset_optimizer]
        first = max(start for start in resets if start <= step)
        later = [start for start in resets if start > first]
        end = later[0] if later else self.total_steps
        return first, max(1, end - first)

    def finished(self, step: int) -> bool:
        # against today's budget: a resume with a larger one (or none) goes on from where the last one ended
        budget = self.base.trainer.max_sampled_tokens
        return step >= self.total_steps or (budget is not None and self.sampled_tokens >= budget)

    def count_tokens(self, tokens: int) -> bool:
        """Add the completion tokens the step just done trained on; True when they bring the count to
        trainer.max_sampled_tokens (the run ends after this step).

        >>> from mmrl.config import load_config
        >>> schedule = StageSchedule(None, load_config(None, ["trainer.max_steps=10", "trainer.max_sampled_tokens=100"]))
        >>> [schedule.count_tokens(60), schedule.count_tokens(60), schedule.finished(2), schedule.sampled_tokens]
        [False, True, True, 120]
        """
        before, self.sampled_tokens = self.sampled_tokens, self.sampled_tokens + int(tokens)
        budget = self.base.trainer.max_sampled_tokens
        return budget is not None and before < budget <= self.sampled_tokens

    def boundaries(self) -> list[tuple[int, str]]:
        """`(start_step, name)` of every stage (actual where entered, planned after), for plots and logs."""
        return [(start, stage.name) for start, stage in zip(self._all_starts(), self.stages)]

    # ---- transitions -------------------------------------------------------------------------------------------
    @staticmethod
    def _lookup(metrics: Mapping[str, Any], key: str) -> float | None:
        for candidate in (key, f"eval/{key}", key.removeprefix("eval/")):
            value = metrics.get(candidate)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        return None

    def _reached(self, stage: StageConfig, metrics: Mapping[str, Any] | None) -> bool:
        if not metrics or stage.until_metric is None or stage.until_value is None:
            return False
        value = self._lookup(metrics, stage.until_metric)
        if value is None:
            return False
        return value >= stage.until_value if stage.until_mode == "max" else value <= stage.until_value

    def advance(self, step: int, eval_metrics: Mapping[str, Any] | None = None) -> bool:
        """Record that `step` steps are done; return True when the stage of the next step differs from before.

        A planned boundary at `step` enters the next stage; an `until_metric` reached in `eval_metrics` (keys as
        `accuracy` or `eval/accuracy`) ends the current stage now, so the next one starts at `step`.
        """
        if step < self._step:
            raise ValueError(f"advance: step went backwards ({self._step} -> {step})")
        before = self.stage_at(self._step).index
        self._step = step
        # Enter every stage whose planned start has been reached (normally at most one).
        while len(self._starts) < len(self.stages):
            last = len(self._starts) - 1
            planned = self._starts[last] + self.stages[last].steps
            if planned > step:
                break
            self._starts.append(planned)
        # The eval at `step` measured the model trained by the stage that ran step - 1: only that stage's
        # until_metric applies, and only while it is still running (a stage just entered is not skipped).
        index = len(self._starts) - 1
        ran = self._index_at(step - 1, self._all_starts()) if step > 0 else -1
        if ran == index and self._ended_at is None and self._reached(self.stages[index], eval_metrics):
            if index + 1 < len(self.stages):
                self._starts.append(step)
            else:
                self._ended_at = step
        return self.stage_at(step).index != before

    # ---- checkpoint state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "names": [s.name for s in self.stages],
            "starts": list(self._starts),
            "ended_at": self._ended_at,
            "step": self._step,
            "sampled_tokens": self.sampled_tokens,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        names = [s.name for s in self.stages]
        if state.get("version") != STATE_VERSION:
            raise UserError(
                f"checkpoint stage state has version {state.get('version')!r}; this mmrl reads "
                f"{STATE_VERSION}. Resume with the mmrl version that wrote it"
            )
        if list(state.get("names", [])) != names:
            raise UserError(
                f"checkpoint stages {state.get('names')} differ from the config's enabled stages {names}; "
                "resume with the stages the run started with"
            )
        starts = [int(s) for s in state["starts"]]
        if not starts or starts[0] != 0 or starts != sorted(starts) or len(starts) > len(names):
            raise UserError(f"checkpoint stage state is corrupt (starts={starts}); resume from another checkpoint")
        self._starts = starts
        self._ended_at = state.get("ended_at")
        self._step = int(state.get("step", starts[-1]))
        if "sampled_tokens" not in state and self.base.trainer.max_sampled_tokens is not None and self._step > 0:
            raise UserError("the checkpoint was written before mmrl counted sampled tokens, so "
                            "trainer.max_sampled_tokens cannot tell how many it has spent; resume without it, or "
                            "start the run again")
        self.sampled_tokens = int(state.get("sampled_tokens", 0))
