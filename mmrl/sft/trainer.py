"""Cold-start SFT: `mmrl sft CONFIG`. Loss on assistant tokens only; same engine as GRPO (checkpoints, exact resume,
logging, several processes).

The loss is the token mean over every label token of the global batch: each micro-batch is normalised by the global
label-token count (all-reduced) and scaled by world_size, so accumulation and averaging across processes give exactly
the loss of the whole batch at once (the same contract as the GRPO losses).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from mmrl.config import MMRLConfig
from mmrl.data.checks import check_for_training
from mmrl.data.collate import encode_sft
from mmrl.data.dataset import load_datasets
from mmrl.data.prompt_order import PromptSampler, shard
from mmrl.errors import UserError
from mmrl.models.interface import interface_of
from mmrl.models.logprobs import head_logprobs
from mmrl.models.placement import compute_autocast, to_model_device
from mmrl.models.prefix import reset_rope_deltas, unwrap
from mmrl.parallel.distributed import all_reduce_sum
from mmrl.runs.directory import release_run_dir
from mmrl.runs.logger import PhaseTimer
from mmrl.runs.training_run import TrainingRun, prepare_run, start_run


def sft_steps(cfg: MMRLConfig, n_samples: int) -> int:
    """`trainer.num_epochs` (when set) decides the number of steps; else `trainer.max_steps`."""
    if cfg.trainer.num_epochs is None:
        return cfg.trainer.max_steps
    return max(1, math.ceil(cfg.trainer.num_epochs * n_samples / cfg.trainer.batch_size))


def label_logprobs(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """log p of every label token (LM head on label positions only): returns (logprobs [N], count N)."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    inner = unwrap(model)
    core = inner.model
    reset_rope_deltas(model)  # positions of a previous batch must not leak in
    with compute_autocast(model):
        hidden = core(**inputs).last_hidden_state
        # Token t is predicted from position t - 1.
        targets = labels[:, 1:]
        active = targets != -100
        scores = head_logprobs(inner.lm_head, hidden[:, :-1][active], targets[active])
    return scores, active.sum()


def load_sft_samples(cfg: MMRLConfig, run_dir: Path) -> list:
    if not cfg.data.train:
        raise UserError("data.train: no SFT data configured; set data.train=path/to/cot.jsonl")
    samples = load_datasets(list(cfg.data.train), cfg.data)
    missing = [s.id for s in samples if not s.response]
    if missing:
        raise UserError(f"data.train: sample {missing[0]} has no target response ({len(missing)} of {len(samples)} "
                        "lack one); SFT needs a `response` (e.g. <think>...</think><answer>...</answer>) per record")
    return check_for_training(samples, cfg.data)  # SFT learns responses: golds are not scored


def train_sft(cfg: MMRLConfig) -> Path:
    """Run cold-start SFT as `cfg` says; returns the run directory (final checkpoint in checkpoints/step-N)."""
    prepare_run(cfg)  # the run directory is checked and locked before anything reads data or writes there
    # Data errors surface before the model loads.
    try:
        samples = load_sft_samples(cfg, Path(cfg.trainer.output_dir))
    except BaseException:
        release_run_dir(cfg.trainer.output_dir)  # nothing was written: leave no claimed, empty directory behind
        raise
    total = sft_steps(cfg, len(samples))
    run = start_run(cfg, total_steps=total)
    if run.dist.is_main:  # which part of the turn the template writes itself (an opened <think> is never a target)
        interface_of(run.model, run.processor, cfg.model.pred_frame, cfg.data.chat_template_kwargs,
                     cfg.data.system_prompt).save(run.run_dir)
    sampler = PromptSampler(len(samples), cfg.trainer.seed, cfg.data.shuffle)
    state = run.load_resume_state()
    if state is not None:
        sampler.load_state_dict(state["sampler"])
    step = run.start_step
    try:
        while step < total:
            timer = PhaseTimer()
            started = time.perf_counter()
            batch_ids = shard(sampler.next(cfg.trainer.batch_size), run.dist.rank, run.dist.world_size)
            with timer("update"):
                loss, tokens = _sft_step(run, [samples[i] for i in batch_ids])
            grad_norm, _ = run.optimizer_step(loss)
            run.scheduler.step()
            step += 1
            seconds = time.perf_counter() - started
            run.logger.log(step, {"loss": loss, "grad_norm": grad_norm, "lr": run.scheduler.get_last_lr()[0],
                                  "epoch": sampler.epoch + sampler.position / len(samples),
                                  "tokens_per_s": tokens / seconds, "samples_per_s": cfg.trainer.batch_size / seconds,
                                  **timer.metrics()})
            if cfg.trainer.save_steps and step % cfg.trainer.save_steps == 0 and step < total:
                run.save(step, {"sampler": sampler.state_dict()})
        if cfg.trainer.save_final and run.start_step < total:
            run.save(step, {"sampler": sampler.state_dict()})
    finally:
        run.close()
    return run.run_dir


def _sft_step(run: TrainingRun, batch_samples: list) -> tuple[float, float]:
    """Forward/backward over the local batch in `grad_accumulation` micro-batches; returns (global loss, tokens)."""
    cfg, world = run.cfg, run.dist.world_size
    parts = max(1, min(cfg.trainer.grad_accumulation, len(batch_samples)))
    size = -(-len(batch_samples) // parts) if batch_samples else 0
    micro = [batch_samples[i: i + size] for i in range(0, len(batch_samples), size)] if size else []
    encoded = [to_model_device(encode_sft(run.processor, mb, cfg.data), run.model) for mb in micro]
    global_tokens = all_reduce_sum(sum(float((b["labels"][:, 1:] != -100).sum()) for b in encoded), world)
    local = 0.0
    for batch in encoded:
        scores, _count = label_logprobs(run.model, batch)
        loss = -scores.sum() / max(global_tokens, 1.0)
        (loss * world).backward()
        local += float(loss.detach())
    return all_reduce_sum(local, world), global_tokens
