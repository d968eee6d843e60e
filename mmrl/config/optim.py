"""`optimizer:` and `trainer:` — how parameters are updated and how the run is driven."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from mmrl.config.base import Section

# numpy's global seed takes 0 .. 2**32 - 1: a larger trainer.seed would pass validation and crash at the run's start
SEED_MAX = 2**32 - 1


class OptimizerConfig(Section):
    name: Literal["adamw", "sgd"] = Field(
        "adamw", description="adamw, or sgd (plain, no momentum; betas/eps unused): exactness checks across world sizes.")
    lr: float = Field(1e-6, gt=0, description="Peak learning rate.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    weight_decay: float = Field(0.0, ge=0, description="Decoupled weight decay.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps (overrides warmup_ratio when > 0).")
    warmup_ratio: float = Field(0.0, ge=0, le=1, description="Warm-up as a fraction of trainer.max_steps.")
    schedule: Literal["constant", "cosine", "linear"] = Field("constant", description="Learning-rate schedule after warm-up.")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Floor of the decaying schedules, as a fraction of lr.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the global gradient norm to this (null: no clip).")


class TrainerConfig(Section):
    output_dir: str = Field("runs/default", description="Run directory: config.yaml, metrics.jsonl, tb/, checkpoints/...")
    max_steps: int = Field(
        100, ge=1,
        description="Training steps to run (the sum of all stages when stages are set). GRPO: one step = one "
        "rollout of prompts_per_step prompts, then num_iterations x mini_batches optimizer steps on it; the LR schedule "
        "advances once per step and follows the steps actually run when until_metric ends a stage early. "
        "SFT: one step = one optimizer step.")
    prompts_per_step: int = Field(
        8, ge=1, description="Prompts per optimizer step across all processes (each is rolled out group_size times)."
    )
    batch_size: int = Field(8, ge=1, description="SFT: samples per optimizer step across all processes.")
    num_epochs: float | None = Field(
        None, gt=0, description="Epochs over the data (GRPO: over the prompts, prompts_per_step per step; SFT: "
        "over the samples); when set, max_steps is derived from it (an explicit max_steps wins, as in HF Trainer).",
    )
    grad_accumulation: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step.")
    max_tokens_per_micro_batch: int | None = Field(
        None, ge=1,
        description="GRPO: most tokens one training forward may hold (bounds the update's activation memory, e.g. for "
        "long PTST stages). A micro-batch holds completions of one prompt; it counts the prompt once (text and image "
        "tokens: the prompt runs once per forward) plus rows x the longest completion among them. A single completion "
        "over the budget goes alone (one per micro-batch). The loss is exact: micro-batches only split the gradient "
        "accumulation. null: one micro-batch per prompt's group (all G completions).")
    max_sampled_tokens: int | None = Field(
        None, ge=1,
        description="GRPO: end the run once the completions it trained on hold this many tokens in all (the "
        "`completion_tokens` of every step so far, across processes and resumes); the step that reaches it is the "
        "last, whatever stage it is in. Compares arms at one sampled-token budget (PTST). The LR schedule still spans "
        "the planned steps, so a decaying one is cut off where the budget ends the run: use schedule constant. "
        "null: no budget.")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Seed for data order, sampling and initialisation.")
    save_steps: int = Field(0, ge=0, description="Save a checkpoint every N steps (0: only at the end).")
    save_final: bool = Field(True, description="Save a checkpoint after the last step.")
    keep_last: int = Field(2, ge=1, description="Keep only the last k complete checkpoints.")
    eval_steps: int = Field(0, ge=0, description="Evaluate on data.eval every N steps (0: never during training).")
    sample_steps: int = Field(10, ge=0, description="Save a sample of completions with rewards every N steps (0: never).")
    resume: str | None = Field(
        None, description="null: start fresh; 'auto': latest complete checkpoint in output_dir; or a checkpoint path."
    )
    resume_allow_changes: list[str] = Field(
        [], description="Settings a resume may change from the config the checkpoint was trained with, e.g. "
        "[optimizer.lr, rollout.group_size] or a whole section [data]; any other change is refused, naming the fields. "
        "Each segment's config is kept in <output_dir>/configs/step-<N>.yaml.")
    overwrite: bool = Field(
        False, description="Start a fresh run in an output_dir that holds an earlier run, deleting its checkpoints and "
        "metrics (without it, such a run is refused: use resume='auto' to continue it)."
    )
    max_nonfinite_steps: int = Field(
        5, ge=1, description="Abort after this many optimizer steps in a row skipped for a non-finite loss or grad norm."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto' = the device accelerate picks.")
    report_to: list[Literal["jsonl", "tensorboard", "wandb", "trackio"]] = Field(
        ["jsonl", "tensorboard"], description="Metric sinks (metrics.jsonl is always written); wandb and trackio are "
        "optional installs and honour offline mode (WANDB_MODE=offline, HF_HUB_OFFLINE=1)."
    )
    progress: bool = Field(
        True, description="Show progress with ETA: a bar on a terminal, plain lines (step, ETA, reward) when the "
        "output goes to a file (nohup, slurm).")
    num_threads: int | None = Field(
        None, ge=1, description="torch intra-op threads per process. null: the CPUs available to the process "
        "(its affinity) divided among the processes on the node, less the cores other jobs keep busy; "
        "OMP_NUM_THREADS is used when set. The first lines of a run say the count and why.")

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_sink(cls, value: object) -> object:
        """`report_to=tensorboard` is a list of one; `none` (TRL's spelling) is no sink beside metrics.jsonl."""
        if isinstance(value, str):
            value = [value]
        if isinstance(value, (list, tuple)) and [str(v).strip().lower() for v in value] == ["none"]:
            return []
        return value
