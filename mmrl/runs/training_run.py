"""What every training run shares (GRPO and SFT): processes, seeds, model, optimizer, schedule, logger, checkpoints.

A trainer builds a `TrainingRun`, asks it for the state to resume from, and calls `save(step, extra)` — the engine
owns where and how things are written, the trainer owns what its own state is.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmrl.checkpoints import store as ckpt
from mmrl.config import MMRLConfig
from mmrl.errors import UserError
from mmrl.faults import fault_point
from mmrl.models.loading import LoadedModel, load_policy
from mmrl.optim import allocate_state, build_optimizer, build_scheduler, trainable_parameters
from mmrl.parallel.distributed import DistInfo, all_gather_objects, barrier, init_distributed
from mmrl.parallel.engine import TrainingEngine
from mmrl.parallel.launch import check_launch, make_engine
from mmrl.runs.directory import claim_run_dir, release_run_dir
from mmrl.runs.logger import RunLogger
from mmrl.runs.segments import check_resume_config, save_segment_config
from mmrl.runs.threads import announce_threads, configure_threads


class TrainingDiverged(UserError):
    """Too many optimizer steps in a row had a non-finite loss or gradient norm."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class TrainingRun:
    cfg: MMRLConfig
    dist: DistInfo
    run_dir: Path
    loaded: LoadedModel
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    logger: RunLogger
    resume_from: Path | None
    engine: TrainingEngine
    start_step: int = 0
    nonfinite_in_a_row: int = 0
    skipped_steps: int = 0

    @property
    def model(self) -> torch.nn.Module:
        return self.loaded.model

    @property
    def processor(self) -> Any:
        return self.loaded.processor

    def optimizer_step(self, loss_value: float) -> tuple[float, bool]:
        """Guarded step: skips (and counts) non-finite steps, aborts after `trainer.max_nonfinite_steps` in a row."""
        fault_point("update")  # crash tests: die in the middle of a step
        # averages the accumulated gradients (one pass, every process), clips, steps unless non-finite
        grad_norm, stepped = self.engine.step(self.optimizer, self.params, loss_value, self.cfg.optimizer.max_grad_norm)
        self.engine.after_step()
        if stepped:
            self.nonfinite_in_a_row = 0
            return grad_norm, True
        self.skipped_steps += 1
        self.nonfinite_in_a_row += 1
        self.logger.event(f"skipped an optimizer step: non-finite loss ({loss_value}) or grad norm ({grad_norm})")
        if self.nonfinite_in_a_row >= self.cfg.trainer.max_nonfinite_steps:
            raise TrainingDiverged(
                f"training diverged: {self.nonfinite_in_a_row} optimizer steps in a row had a non-finite loss or "
                f"gradient norm; lower optimizer.lr or check the data (last loss {loss_value})"
            )
        return grad_norm, False

    def logprobs(self, prompt: dict[str, Any], completion_ids: torch.Tensor, completion_mask: torch.Tensor,
                  temperature: float = 1.0) -> torch.Tensor:
        """The training forward of one group (through the data-parallel wrapper when several processes run)."""
        return self.engine.forward(prompt, completion_ids, completion_mask, temperature=temperature)

    def topology(self) -> dict[str, Any]:
        """How this run is spread: recorded in its first metrics row."""
        return {"world_size": self.dist.world_size, "engine": self.engine.name,
                "threads": configure_threads().threads}

    def save(self, step: int, extra: dict[str, Any]) -> Path | None:
        """Checkpoint `step` (main process writes; all wait) with optimizer, schedule, RNG and the trainer's state."""
        path = None
        optimizer_state = self.engine.optimizer_state(self.optimizer)  # FSDP2: gathered by every process
        weights = self.engine.full_weights()  # FSDP2: gathered by every process (None: the model holds them whole)
        if self.dist.is_main:
            state = {
                "step": step,
                "optimizer": optimizer_state,
                "scheduler": self.scheduler.state_dict(),
                "rng": ckpt.rng_state(),
                "nonfinite_in_a_row": self.nonfinite_in_a_row,
                "skipped_steps": self.skipped_steps,
                **extra,
            }
            path = ckpt.save_checkpoint(self.run_dir, step, self.model, state, self.processor,
                                        keep_last=self.cfg.trainer.keep_last, weights=weights)
        barrier(self.dist.world_size)
        return path

    def load_resume_state(self) -> dict[str, Any] | None:
        """Restore model, optimizer, schedule and RNG from `resume_from`; return the full state for the trainer."""
        if self.resume_from is None:
            return None
        if not self.engine.load_weights(self.resume_from):  # FSDP2 loads into its shards
            ckpt.load_model_weights(self.model, self.resume_from)
        state = ckpt.load_trainer_state(self.resume_from)
        ckpt.check_optimizer_kind(state["optimizer"], self.engine.name, self.dist.world_size,
                                  partitioned=self.engine.owns_optimizer)
        self.engine.load_optimizer_state(self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        ckpt.set_rng_state(state["rng"])
        self.nonfinite_in_a_row = state.get("nonfinite_in_a_row", 0)
        self.skipped_steps = state.get("skipped_steps", 0)
        self.start_step = int(state["step"])
        self.logger.event(f"resumed from {self.resume_from} at step {self.start_step}")
        fault_point("resumed")  # crash tests: die right after the resume is announced
        return state

    def close(self) -> None:
        self.logger.close()
        release_run_dir(self.run_dir)


def prepare_run(cfg: MMRLConfig) -> Path:
    """Claim `trainer.output_dir` before a trainer reads data or loads a model: writable, locked, and not an earlier
    run's directory unless `trainer.resume` or `trainer.overwrite` says what to do with it (see `run_dir.py`).

    The config's names were checked when it loaded; after this call the directory is this process's to write.
    """
    if cfg.trainer.resume not in (None, "", "none", "null", "auto"):
        ckpt.resolve_resume(cfg.trainer.resume, cfg.trainer.output_dir)  # a named checkpoint must be whole: check now
    return claim_run_dir(cfg.trainer.output_dir, cfg.trainer.resume, cfg.trainer.overwrite)


def resolve_resume_everywhere(resume: str | None, run_dir: Path, dist: DistInfo) -> Path | None:
    """`trainer.resume` resolved by every process, and the same answer everywhere, or one line on every process.

    Each process reads the run directory itself (and later the checkpoint's weights); processes on nodes that do not
    share the filesystem would otherwise disagree silently: one resumed at step N, another started fresh (different
    weights, different step counts, a hang when the first one finishes)."""
    try:
        local, problem = ckpt.resolve_resume(resume, run_dir, say=ckpt.tell if dist.is_main else None), None
    except UserError as err:  # every process must reach the gather below, or the others wait in it
        local, problem = None, str(err)
    # by the checkpoint's name: every process is given the same trainer.output_dir and trainer.resume
    views = all_gather_objects((local.name if local else None, problem), dist.world_size)
    problems = [(rank, p) for rank, (_, p) in enumerate(views) if p]
    if problems:
        rank, problem = problems[0]
        raise UserError(problem if dist.world_size == 1 else f"process {rank}: {problem}")
    chosen = views[0][0]
    for rank, (seen, _) in enumerate(views):
        if seen != chosen:
            raise UserError(f"trainer.resume: the main process resumes from {chosen or 'no checkpoint (fresh start)'} "
                            f"but process {rank} sees {seen or 'no checkpoint'}; every process must see the same "
                            f"trainer.output_dir ({run_dir}): put it on a filesystem all nodes share")
    return local


def start_run(cfg: MMRLConfig, total_steps: int | None = None) -> TrainingRun:
    """Processes, seed, run dir (with the resolved config), model, optimizer, schedule, logger, resume point."""
    run_dir = prepare_run(cfg)
    configure_threads(cfg.trainer.num_threads)  # before torch's first parallel op; said in the run's first lines
    dist = init_distributed(cfg.trainer.device)
    seed_everything(cfg.trainer.seed)
    resume_from = resolve_resume_everywhere(cfg.trainer.resume, run_dir, dist)
    if resume_from is not None:  # before the model loads: a LoRA checkpoint needs LoRA on, whole weights need it off
        ckpt.check_weights_kind(resume_from, cfg.model.lora.enabled)
    check_launch(dist, cfg.optimizer.max_grad_norm)  # the preset's options (DeepSpeed's install), before the model loads
    loaded = load_policy(cfg.model, device=dist.device, for_training=True)
    engine = make_engine(loaded.model, dist)  # DDP, FSDP2, DeepSpeed: every process starts from rank 0's weights
    loaded.model.train()
    params = trainable_parameters(loaded.model)
    if not params:
        raise UserError("model: no trainable parameters (everything is frozen); check model.freeze_vision_tower/lora")
    optimizer = build_optimizer(params, cfg.optimizer)
    engine.start(optimizer, cfg.optimizer.max_grad_norm)  # DeepSpeed takes the optimizer over here
    if cfg.rollout.backend == "vllm" and not engine.owns_optimizer:  # (ZeRO allocated its state in start)
        allocate_state(optimizer)  # before the colocated engine checks the free memory, not after its first wake
    steps = total_steps or cfg.trainer.max_steps
    scheduler = build_scheduler(optimizer, cfg.optimizer, steps)
    start_step = int(resume_from.name.split("-")[1]) if resume_from else 0
    # only once the model loaded: a mistyped model name gets its own error, and must not rewrite a resumed run's config
    check_resume_config(cfg, run_dir, resume_from)
    announce_threads()  # the run's first line once its setup went through
    if dist.is_main:
        save_segment_config(cfg, run_dir, start_step)
    logger = RunLogger(run_dir, cfg.trainer.report_to, enabled=dist.is_main, total_steps=steps,
                       progress=cfg.trainer.progress, start_step=start_step)
    return TrainingRun(cfg=cfg, dist=dist, run_dir=run_dir, loaded=loaded, params=params, optimizer=optimizer,
                       scheduler=scheduler, logger=logger, resume_from=resume_from, engine=engine)
