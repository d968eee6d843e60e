"""`stages:`, `eval:` and `pipeline:` — curricula, evaluation and multi-step recipes."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from mmrl.config.base import Section
from mmrl.config.data import DatasetSpec
from mmrl.config.rl import RewardSpec

_STEP_NAME = re.compile(r"[A-Za-z0-9_.-]+")


class StageConfig(Section):
    name: str = Field(..., description="Stage name (shown in logs and plots).")
    steps: int = Field(..., ge=1, description="Training steps in this stage (one rollout batch each; see trainer.max_steps).")
    until_metric: str | None = Field(
        None,
        description="End the stage early (before `steps`) when this eval metric (e.g. 'accuracy') reaches until_value; "
        "checked each time the trainer evaluates.",
    )
    until_value: float | None = Field(None, description="Threshold for until_metric.")
    until_mode: Literal["max", "min"] = Field(
        "max", description="'max': switch when the metric is >= until_value; 'min': when it is <= until_value."
    )
    data: list[DatasetSpec] | None = Field(None, description="Training data of this stage (default: data.train).")
    group_size: int | None = Field(None, ge=2, description="Override rollout.group_size.")
    max_completion_length: int | None = Field(None, ge=1, description="Override rollout.max_completion_length.")
    rewards: list[RewardSpec] | None = Field(None, description="Override rewards.")
    prompt_suffix: str | None = Field(None, description="Override data.prompt_suffix.")
    enabled: bool = Field(True, description="Set false to skip an optional stage (e.g. PTST stage 3).")
    reset_optimizer: bool = Field(
        False, description="Start this stage as a new run does (Curr-ReFT launches each stage fresh): the optimizer's "
        "moments and step counts are zeroed at its first step, and the learning-rate schedule (optimizer.warmup_steps "
        "/ warmup_ratio, schedule, min_lr_ratio) restarts there, spanning this stage and the following stages up to "
        "the next reset. false: the optimizer and schedule carry on. Ignored on the first stage.")

    @model_validator(mode="after")
    def _until_pair(self) -> StageConfig:
        if (self.until_metric is None) != (self.until_value is None):
            raise ValueError(f"stage '{self.name}': set both until_metric and until_value, or neither")
        return self


class EvalConfig(Section):
    k: int = Field(1, ge=1, description="Samples per item (pass@k and mean@k when k > 1).")
    greedy: bool = Field(True, description="Greedy decoding (k must be 1) or sampling at eval.temperature.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature when not greedy.")
    max_new_tokens: int = Field(128, ge=1, description="Maximum new tokens per answer.")
    batch_size: int = Field(16, ge=1, description="Items generated at once.")
    limit: int | None = Field(None, ge=1, description="Evaluate at most this many items.")
    seed: int = Field(0, ge=0, description="Seed of sampled generation (greedy ignores it).")
    output_dir: str | None = Field(None, description="Where report.json/report.md/generations.jsonl go "
                                   "(default: <run dir>/eval, or runs/eval/<model>-<data> for `mmrl eval --model`).")
    answer_tags: tuple[str, str] = Field(("<answer>", "</answer>"), description="Tags the answer is extracted from.")
    allow_boxed: bool = Field(
        True, description="Also accept a \\boxed{...} answer when the tags are missing (as the accuracy reward does)."
    )
    reward_for_task: dict[str, str] = Field(
        default_factory=dict,
        description="Tasks scored by a reward function (registered name or 'file.py:function'), e.g. "
        "{mytask: my_rewards.py:score}. Otherwise gui uses the gui_action reward's action+target parts and every "
        "other task (grounding included: IoU > 0.5) extract_answer + verify_answer, exactly as the accuracy reward.",
    )
    category_keys: list[str] = Field(
        default_factory=lambda: ["category", "subject", "question_type", "skill", "synthetic_task"],
        description="Sample meta keys naming an item's category for the per-category breakdown (first present wins).",
    )
    correct_threshold: float = Field(
        0.5, ge=0, le=1, description="A generation counts as correct when its score is >= this (IoU >= 0.5 for "
        "grounding; binary scores are unaffected). Used by accuracy, pass@k and mean@k.",
    )
    save_generations: bool = Field(True, description="Write generations.jsonl (prompt, answer, generations, scores).")


class PipelineStep(Section):
    """One step of `mmrl pipeline`; its outputs go to `<output_dir>/<name>/` and feed the later steps.

    Wiring (explicit `overrides` win): a build-data step sets `data.train` / `data.eval` (synthetic) or
    `stages.0-2.data` (curriculum) of the later steps; an sft/train step sets their `model.name_or_path` to its
    final checkpoint. Every step's `trainer.output_dir` is its own directory.
    """

    name: str = Field(..., description="Step name (letters, digits, '_', '-', '.'); its outputs go to <output_dir>/<name>.")
    kind: Literal["build-data", "sft", "train", "eval"] = Field(..., description="What the step runs.")
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Config overrides for this step only (dotted keys, e.g. {trainer.max_steps: 2}); they win over "
        "the values wired from earlier steps.",
    )
    args: dict[str, Any] = Field(
        default_factory=dict,
        description="Step-specific arguments. build-data: {builder: synthetic, tasks: [color], n: 600, eval_n: 200, "
        "seed: 0, eval_seed: seed+1, forms: [open], difficulty: 1, image_size: 56, with_cot: true} or {builder: "
        "curriculum, input: <path> (default: the data.train of an earlier step), seed: 0}; `wire: {config.key: "
        "output}` replaces the default wiring. eval: {model: base | <earlier sft/train step name> (default: the "
        "latest trained model), label: <key in summary.json> (default: the step name)}. sft/train: none.",
    )

    @field_validator("name")
    @classmethod
    def _directory_name(cls, value: str) -> str:
        if not _STEP_NAME.fullmatch(value) or value in (".", ".."):
            raise ValueError(f"step name {value!r} must be a plain directory name (letters, digits, '_', '-', '.')")
        return value


class ClaimConfig(Section):
    """One paper claim a seeded pipeline tests, fixed before any run: the difference `arm - baseline` per seed (the
    arms of a seed share its data, eval items and SFT start, so the difference is paired), a 95% interval of its
    mean over the seeds, and the verdict: "reproduced" when the interval excludes 0 in the paper's direction,
    "opposite" when it excludes 0 the other way, "not distinguishable" otherwise (or with fewer than 2 seeds)."""

    name: str = Field(..., description="Claim name (a key of summary.json's claims).")
    paper: str = Field("", description="What the paper claims, in a sentence (shown with the verdict).")
    arm: str = Field(
        ...,
        description="The paper's arm, one seed's measure: eval.<label>.accuracy | eval.<label>.completion_length | "
        "train.<step>.seconds | train.<step>.sampled_tokens | train.<step>.<first|last|mean>.<metric> (a metrics.jsonl "
        "column over the first or last 5 logged steps, or all of them); or a ratio 'A / B' of two measures (the slash "
        "with spaces around it: metric names hold '/').",
    )
    baseline: str = Field(..., description="The arm it is compared with, as `arm`.")
    direction: Literal["greater", "less"] = Field(
        ..., description="The paper's direction: 'greater' when it says arm > baseline, 'less' when arm < baseline."
    )
    interval: Literal["paired_t", "bootstrap"] = Field(
        "paired_t",
        description="paired_t: mean difference +- t(0.975, n-1) x sd / sqrt(n) over the seeds (honest with few "
        "seeds); bootstrap: 2.5th and 97.5th percentiles of the mean difference over 10,000 resamples of the seeds.",
    )
