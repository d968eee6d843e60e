"""`stages:`, `eval:` and `pipeline:` — curricula, evaluation and multi-step recipes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from mmrl.config.base import Section
from mmrl.config.data import DatasetSpec
from mmrl.config.rl import RewardSpec


class StageConfig(Section):
    name: str = Field(..., description="Stage name (shown in logs and plots).")
    steps: int = Field(..., ge=1, description="Optimizer steps in this stage.")
    until_metric: str | None = Field(None, description="End the stage early when this eval metric reaches until_value.")
    until_value: float | None = Field(None, description="Threshold for until_metric.")
    data: list[DatasetSpec] | None = Field(None, description="Training data of this stage (default: data.train).")
    group_size: int | None = Field(None, ge=2, description="Override rollout.group_size.")
    max_completion_length: int | None = Field(None, ge=1, description="Override rollout.max_completion_length.")
    rewards: list[RewardSpec] | None = Field(None, description="Override rewards.")
    prompt_suffix: str | None = Field(None, description="Override data.prompt_suffix.")
    enabled: bool = Field(True, description="Set false to skip an optional stage (e.g. PTST stage 3).")


class EvalConfig(Section):
    k: int = Field(1, ge=1, description="Samples per item (pass@k and mean@k when k > 1).")
    greedy: bool = Field(True, description="Greedy decoding (k must be 1) or sampling at eval.temperature.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature when not greedy.")
    max_new_tokens: int = Field(128, ge=1, description="Maximum new tokens per answer.")
    batch_size: int = Field(16, ge=1, description="Items generated at once.")
    limit: int | None = Field(None, ge=1, description="Evaluate at most this many items.")
    metric: Literal["accuracy"] = Field("accuracy", description="Headline metric.")


class PipelineStep(Section):
    name: str = Field(..., description="Step name; its outputs go to <output_dir>/<name>.")
    kind: Literal["build-data", "sft", "train", "eval"] = Field(..., description="What the step runs.")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Config overrides for this step (dotted keys).")
    args: dict[str, Any] = Field(default_factory=dict, description="Step-specific arguments (e.g. data builder options).")
