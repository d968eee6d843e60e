"""The root config tree. Load order: defaults -> YAML (may `extends:` a base) -> dotted CLI overrides -> validation,
where `derive()` computes every dependent value in one place."""

from __future__ import annotations

import os
from typing import Annotated

from pydantic import Field, ValidationInfo, model_validator

from mmrl.config.base import Section
from mmrl.config.data import DataConfig
from mmrl.config.env import EnvConfig
from mmrl.config.model import ModelConfig
from mmrl.config.optim import SEED_MAX, OptimizerConfig, TrainerConfig
from mmrl.config.rl import AlgorithmConfig, RewardSpec, RolloutConfig
from mmrl.config.workflow import ClaimConfig, EvalConfig, PipelineStep, StageConfig


def _default_rewards() -> list[RewardSpec]:
    return [RewardSpec(name="accuracy", weight=1.0), RewardSpec(name="format", weight=0.5)]


def _check_mini_batches(cfg: MMRLConfig) -> None:
    """With several mini-batches each process splits its share of the step's prompts into `mini_batches` parts; the
    parts make the same global mini-batches on any number of processes only when the prompts divide evenly.
    The process count is the launcher's WORLD_SIZE (1 without a launcher)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    parts, prompts = cfg.algorithm.mini_batches, cfg.trainer.prompts_per_step
    if parts > 1 and prompts % (world * parts):
        fit = -(-prompts // (world * parts)) * world * parts
        raise ValueError(
            f"trainer.prompts_per_step ({prompts}) must be a multiple of processes x algorithm.mini_batches "
            f"({world} x {parts} = {world * parts}) so every optimizer step sees the same prompts on any number of "
            f"processes; set trainer.prompts_per_step={fit} or change algorithm.mini_batches")


def _check_async(cfg: MMRLConfig) -> None:
    """`rollout.max_staleness >= 1` runs one rollout worker process beside each trainer process (each DDP rank its
    own); refuse what that design does not cover, in one line each, rather than train on something else than what
    was asked."""
    k = cfg.rollout.max_staleness
    if k == 0:
        return
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    # The engine accelerate's preset asked for (mmrl.parallel.launch.engine_from_launch reads the same variables).
    sharded = os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
    engine = ("FSDP2 (the parameters are sharded over the ranks)" if sharded
              else "DeepSpeed (its engine owns the parameters and their update)")
    refusals = [
        (world > 1 and (sharded or deepspeed), f"gives each rank's worker a whole, plain copy of the policy and "
         f"of its weights after every step; under {engine} that copy is not built: launch with the DDP preset "
         "(configs/accelerate/ddp_*.yaml) or set rollout.max_staleness=0"),
        (world > 1 and cfg.algorithm.online_filter.enabled and cfg.algorithm.online_filter.max_tries > 1,
         "with several processes cannot refill filtered groups (algorithm.online_filter): the ranks agree on a "
         "refill through the process group, which the rollout workers are not in; set "
         "algorithm.online_filter.max_tries=1 (filter, no refill) or rollout.max_staleness=0"),
        (cfg.rollout.backend != "hf", f"needs rollout.backend=hf (the worker samples with its own copy of the "
         f"policy); got {cfg.rollout.backend!r}: set rollout.backend=hf or rollout.max_staleness=0"),
        (cfg.algorithm.tis_cap is None, "corrects the stale samples with algorithm.is_correction, which is off "
         "(algorithm.tis_cap: null); set algorithm.tis_cap (e.g. 2.0) or rollout.max_staleness=0"),
        (cfg.model.compile, "copies the policy into the worker process, which a torch.compile'd model cannot be; "
         "set model.compile=false or rollout.max_staleness=0"),
        (bool(cfg.env.name), f"rolls out single-turn groups; multi-turn episodes (env.name={cfg.env.name!r}) are "
         "not covered yet: set rollout.max_staleness=0 or remove env.name"),
        (any(s.until_metric for s in cfg.stages if s.enabled), "samples steps ahead, so a stage must not end on "
         "an eval metric (stages[].until_metric) the worker cannot know yet; remove until_metric or set "
         "rollout.max_staleness=0"),
    ]
    for refused, why in refusals:
        if refused:
            raise ValueError(f"rollout.max_staleness={k} {why}")


class MMRLConfig(Section):
    """Everything one mmrl run needs. Every field is documented; `mmrl config show` prints the resolved tree."""

    name: str | None = Field(None, description="Run name (default: the config file's stem).")
    output_dir: str | None = Field(
        None, description="Pipelines: root directory of all steps' outputs (default runs/<name>)."
    )
    model: ModelConfig = Field(default_factory=ModelConfig, description="Policy model.")
    data: DataConfig = Field(default_factory=DataConfig, description="Datasets and image preparation.")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Sampling of completions.")
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig, description="Advantages, loss, KL, filtering.")
    rewards: list[RewardSpec] = Field(default_factory=_default_rewards, description="Weighted reward components.")
    env: EnvConfig = Field(default_factory=EnvConfig, description="Multi-turn episodes against an environment "
                           "(docs/multiturn.md); env.name null: single-turn RL.")
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig, description="Optimizer and schedule.")
    trainer: TrainerConfig = Field(default_factory=TrainerConfig, description="Run length, logging, checkpoints.")
    stages: list[StageConfig] = Field(default_factory=list, description="Curriculum / PTST stages (empty: one stage).")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation settings.")
    pipeline: list[PipelineStep] = Field(default_factory=list, description="Steps of `mmrl pipeline` (in order).")
    claims: list[ClaimConfig] = Field(
        default_factory=list,
        description="Pipelines with seeds: the paper claims tested, each a paired difference between two arms with a "
        "95% interval and a verdict in <output_dir>/summary.json (see ClaimConfig); fixed before any run.",
    )
    seeds: list[Annotated[int, Field(ge=0, le=SEED_MAX)]] = Field(
        default_factory=list,
        description="Pipelines: run every step once per seed (trainer.seed=<seed>, outputs in <output_dir>/seed-<seed>/; "
        "data and eval items stay the same) and aggregate each eval's accuracy (mean, std, min, max) in "
        "<output_dir>/summary.json. Each 0 .. 2**32-1, listed once. Empty: one run with trainer.seed.",
    )

    @model_validator(mode="after")
    def derive(self, info: ValidationInfo) -> MMRLConfig:
        """Derive dependent values and check cross-field rules (the only place values are derived).

        Keys set explicitly (on the command line, or as overrides: the loader passes them, in the order given, as
        `context={"explicit": [...]}`) win over values derived from others, as in HF Trainer: an explicit
        `trainer.max_steps` ends the stage list early and replaces `trainer.num_epochs` (unless num_epochs is
        given after it).
        """
        explicit = list((info.context or {}).get("explicit", ()))  # in the order given: a later key wins
        active = [s for s in self.stages if s.enabled]
        if self.stages and not active:
            raise ValueError("stages: every stage is disabled; enable at least one")
        if "trainer.max_steps" in explicit and (
            "trainer.num_epochs" not in explicit
            or explicit.index("trainer.max_steps") > explicit.index("trainer.num_epochs")
        ):
            self._explicit_max_steps(active)
        elif active:
            self.trainer.max_steps = sum(s.steps for s in active)
        if self.eval.greedy and self.eval.k > 1:
            raise ValueError("eval.k > 1 needs sampling: set eval.greedy=false")
        f = self.algorithm.online_filter
        if f.enabled and not f.low < f.high:
            raise ValueError(f"algorithm.online_filter.low must be < high (got {f.low} and {f.high})")
        _check_mini_batches(self)
        _check_async(self)
        if self.rollout.min_new_tokens > self.rollout.max_completion_length:
            raise ValueError("rollout.min_new_tokens must be <= rollout.max_completion_length")
        if self.trainer.overwrite and self.trainer.resume not in (None, "", "none", "null"):
            raise ValueError(f"trainer.overwrite=true deletes the run that trainer.resume={self.trainer.resume!r} "
                             "would continue; set one of them")
        return self

    def _explicit_max_steps(self, active: list[StageConfig]) -> None:
        """An explicit `trainer.max_steps` cuts the stages at that step and replaces num_epochs (given earlier, or
        by the YAML), as `max_steps` overrides `num_train_epochs` in HF Trainer."""
        steps = self.trainer.max_steps
        self.trainer.num_epochs = None
        total = sum(s.steps for s in active)
        if not active or steps == total:
            return
        if steps > total:
            raise ValueError(f"trainer.max_steps={steps} (given explicitly) is more than the stages' {total} steps; lengthen a stage "
                             f"(e.g. stages.{self.stages.index(active[-1])}.steps=...) instead")
        remaining = steps
        for stage in active:  # keep the stages that fit, shorten the one that crosses max_steps, disable the rest
            if remaining <= 0:
                stage.enabled = False
            elif stage.steps > remaining:
                stage.steps = remaining
            remaining -= stage.steps if stage.enabled else 0
