"""The `env:` section: multi-turn episodes against an environment (`mmrl.envs`). `env.name: null` (the default) is
single-turn RL, unchanged."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from mmrl.config.base import Section


class EnvConfig(Section):
    name: str | None = Field(
        None,
        description="Environment for multi-turn episodes: a built-in name (gui_steps, zoom_digit) or "
        "'path/to/file.py:Class'. null: single-turn RL (no environment).",
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments of the environment's "
        "constructor (checked at config load). One instance is built per episode.",
    )
    max_turns: int = Field(
        4,
        ge=1,
        le=64,
        description="Model turns per episode at most; an episode the environment "
        "never ends stops here (termination 'max_turns').",
    )
    max_turn_tokens: int | None = Field(
        None, ge=1, description="New tokens per model turn at most (default: the stage's max_completion_length)."
    )
    max_total_tokens: int = Field(
        2048,
        ge=16,
        description="Tokens of the whole conversation (prompt, model turns, "
        "observations and their images) at most: a turn that could pass it is not sampled "
        "(termination 'max_tokens'). Also bounded by the model's context.",
    )
    step_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Wall-clock limit of one environment call (construction, "
        "reset, step); a call over it ends its episode (termination 'env_timeout').",
    )
    max_images_per_turn: int = Field(
        4,
        ge=0,
        le=64,
        description="Images one observation may hold; more ends the episode (termination 'bad_observation').",
    )
    max_observation_chars: int = Field(20_000, ge=1, description="Characters of one observation's text at most.")
    episode_return: Literal["sum", "last", "max"] = Field(
        "sum",
        description="How an episode's per-turn rewards make the return GRPO's advantage is computed over: "
        "their sum (default), the last turn's, or the largest.",
    )

    @model_validator(mode="after")
    def _a_turn_fits(self) -> EnvConfig:
        # the total is checked before each turn (prompt + max_turn_tokens): a turn as long as the total never fits, so
        # every episode would end as max_tokens before its first turn and the run would train on nothing
        if self.max_turn_tokens is not None and self.max_turn_tokens >= self.max_total_tokens:
            raise ValueError(
                f"env.max_turn_tokens ({self.max_turn_tokens}) must be below env.max_total_tokens "
                f"({self.max_total_tokens}), which also holds the prompt and the observations"
            )
        return self
