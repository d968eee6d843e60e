"""The policy update of one step: mu passes over mini-batches of the step's `TrainingBatch`, one backward per
micro-batch, one optimizer step per mini-batch. The advantages, the micro-batch plan, the old and reference
log-probs and the entropy controls are the batch's (`mmrl.rl.training_batch`, run by the loop before this).

Loss normalisation follows the contract in `mmrl/rl/aggregations.py`: every micro-batch uses the global active-token,
sequence and micro-batch counts of its mini-batch (summed over processes) and is scaled by world_size, so
accumulated and averaged gradients equal those of the whole global mini-batch computed at once.

What a step does, whatever the number of processes:
- every process makes exactly `num_iterations * mini_batches` optimizer steps: its groups are split into exactly
  `mini_batches` parts (a part may be empty when the online filter kept few groups), so no rank waits on a collective
  the others never reach;
- a group whose advantages are all 0 and that has no KL term in the loss contributes exactly 0: its forwards (old
  log-probs included) are skipped as a speed-up only — the optimizer still steps, with zero gradient from it (TRL's
  and verl's semantics; `guarded_step` turns missing gradients into zeros on one process as on several);
- a micro-batch (one forward + backward) is one group, or with `trainer.max_tokens_per_micro_batch` some rows of one
  group within that many tokens (`mmrl.rl.micro_batches`: same loss, only the accumulation is split).
  `update/micro_batches` counts the training forwards; their losses and token counts reach the host in one copy per
  mini-batch, not one per forward (`mmrl.rl.step_metrics`).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from mmrl.config.rl import AlgorithmConfig
from mmrl.models.compile import compiled_decoder_layers
from mmrl.models.logprobs import recording_entropy
from mmrl.models.training_forward import reuse_image_features
from mmrl.models.vision_tower import count_vision, vision_module
from mmrl.parallel.distributed import all_reduce_sum
from mmrl.rl.entropy import entropy_bonus, per_token_entropy
from mmrl.rl.experience import Group
from mmrl.rl.losses import LossInputs, Normalisers, PolicyLoss, loss_mask
from mmrl.rl.micro_batches import MicroBatch
from mmrl.rl.mismatch import MismatchBounds, mismatch_weights
from mmrl.rl.stages import ResolvedStage
from mmrl.rl.step_metrics import ForwardResult, StepTally
from mmrl.rl.training_batch import TrainingBatch, TrainingGroup
from mmrl.runs.training_run import TrainingRun

T = TypeVar("T")


def policy_update(run: TrainingRun, batch: TrainingBatch, stage: ResolvedStage) -> dict[str, float]:
    """Train on `batch`; returns loss, grad norm and the loss-side metrics (means over micro-batches), with the
    batch's own metrics (the KL in the reward, the entropy controls)."""
    cfg, algo = run.cfg, run.cfg.algorithm
    policy_loss = PolicyLoss.from_config(algo)  # the algorithm's loss settings, once: the loop passes tensors only
    vision = dict(batch.vision)  # the vision-tower counters, on from the batch's forwards
    ctx = _UpdateContext(run, policy_loss, batch, stage.max_completion_length, vision)
    tally = StepTally()
    with count_vision(vision_module(run.model), vision), compiled_decoder_layers(run.model, cfg.model.compile):
        for iteration in range(algo.num_iterations):
            for mini in split_groups(batch.groups, algo.mini_batches):
                # the mismatch is measured on the first pass, where the weights are the rollout's
                _train_mini_batch(ctx, mini, measure_mismatch=iteration == 0, tally=tally)
        return tally.summary(run.dist.world_size, batch.metrics, vision)


def split_groups(groups: Sequence[T], parts: int) -> list[Sequence[T]]:
    """Exactly `parts` consecutive chunks whose sizes differ by at most one (trailing ones may be empty).

    Consecutive chunks of this process's strided share make each global mini-batch the same set of prompts as on
    one process when trainer.prompts_per_step is a multiple of processes x parts (the config checks it)."""
    base, extra = divmod(len(groups), parts)
    out, start = [], 0
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        out.append(groups[start: start + size])
        start += size
    return out


@dataclass(frozen=True)
class _UpdateContext:
    """What every training micro-batch of one step needs besides its group."""

    run: TrainingRun
    policy_loss: PolicyLoss
    batch: TrainingBatch
    max_completion_length: int  # the stage's: dr_grpo's normaliser
    vision: dict[str, Any]


def _train_mini_batch(ctx: _UpdateContext, mini: Sequence[TrainingGroup], measure_mismatch: bool,
                      tally: StepTally) -> None:
    """Every micro-batch of this process's share of one mini-batch (one backward each), then one optimizer step."""
    run, world, algo = ctx.run, ctx.run.dist.world_size, ctx.run.cfg.algorithm
    masks = [loss_mask(g.group.completion_mask, g.group.truncated, algo.mask_truncated) for g in mini]
    # the mini-batch's global counts (summed over processes) that every micro-batch's loss is normalised by
    norms = Normalisers(max_completion_length=ctx.max_completion_length,
                        global_active_tokens=all_reduce_sum(sum(float(m.sum()) for m in masks), world),
                        global_num_sequences=int(all_reduce_sum(sum(m.shape[0] for m in masks), world)),
                        global_micro_batches=int(all_reduce_sum(len(mini), world)),
                        global_entropy_tokens=all_reduce_sum(sum(float(g.trained_tokens(m).sum())
                                                                 for g, m in zip(mini, masks)), world))
    forwards: list[list[ForwardResult]] = []  # per group that trains, its micro-batches'
    for group, mask in zip(mini, masks):
        # All-zero advantages and no KL term: the loss is exactly 0 whatever the ratio, so skip the forward
        # (a speed-up only: its tokens still count in the normalisers and the optimizer still steps).
        if not ctx.batch.trains(group):
            continue
        pieces = [_train_micro_batch(ctx, group, part, mask, norms, measure_mismatch) for part in group.parts]
        forwards.append([f for f in pieces if f is not None])
    step_loss = all_reduce_sum(tally.add_groups(forwards), world)
    grad_norm, stepped = run.optimizer_step(step_loss)
    tally.add_step(step_loss, grad_norm, stepped)


def _train_micro_batch(ctx: _UpdateContext, group: TrainingGroup, part: MicroBatch, mask: torch.Tensor,
                       norms: Normalisers, measure_mismatch: bool) -> ForwardResult | None:
    """Forward, truncated-IS weights, loss and backward of one micro-batch of `group` (`mask`: the group's loss mask
    [G, T]); None when these rows' loss is exactly 0 (no forward runs)."""
    run, algo, policy_loss = ctx.run, ctx.run.cfg.algorithm, ctx.policy_loss
    if not ctx.batch.trains(group, part):
        return None
    piece = part.of(group.group)  # the group itself without a token budget
    old_logp, ref_logp = part.cut_mask(group.old_logp), part.cut_mask(group.ref_logp)
    tap: list[torch.Tensor] = []  # this forward's token entropies, when the step applies an entropy bonus
    with reuse_image_features(run.model, piece.image_features, ctx.vision), \
            (recording_entropy(tap) if ctx.batch.entropy_coef > 0 else nullcontext()):
        logp = run.logprobs(piece.prompt, piece.completion_ids, piece.completion_mask, run.cfg.rollout.temperature)
    is_weight, mismatch = _tis_weight(piece, old_logp, logp, algo)
    active = part.cut_mask(mask)
    per_token, metrics = policy_loss(LossInputs(logp, old_logp, part.cut_rows(group.advantages), active,
                                                ref_logp=ref_logp, is_weight=is_weight,
                                                sampler_logp=piece.sampler_logp,
                                                entropy_mask=part.cut_mask(group.entropy_selection)))
    # Aggregated as the group's loss restricted to these rows: the group's mask and the global normalisers, whatever
    # the aggregation (see mmrl.rl.micro_batches).
    loss = policy_loss.aggregate(part.scatter(per_token, mask.shape), mask, norms)
    if tap:  # minus c * this piece's share of the global mini-batch's mean entropy
        entropy = per_token_entropy(tap, piece.completion_mask)
        trained = part.cut_mask(group.trained_tokens(mask)).to(entropy.device)
        loss = loss + entropy_bonus(entropy, trained, ctx.batch.entropy_coef, norms.global_entropy_tokens or 0.0)
        metrics = {**metrics, "entropy": float(_masked_mean(entropy.detach(), active.to(entropy.device)))}
    (loss * run.dist.world_size).backward()
    return ForwardResult(loss=loss.detach(), tokens=active.sum(), metrics={k: float(v) for k, v in metrics.items()},
                         mismatch=mismatch if measure_mismatch else {}, mismatch_tokens=piece.completion_mask.sum(),
                         size=part.tokens)


def _tis_weight(piece: Group, old_logp: torch.Tensor | None, logp: torch.Tensor,
                algo: AlgorithmConfig) -> tuple[torch.Tensor | None, dict[str, float]]:
    """The `algorithm.is_correction` weights [G, T] when the rollout backend returned its sampler's log-probs and
    `tis_cap` is set (else None), against the trainer's log-probs of the rollout weights: `old_logp`, or this
    forward's when the update is on-policy (mu = 1, one mini-batch: the weights have not moved yet); and the mismatch
    metrics (empty without the sampler's log-probs)."""
    if piece.sampler_logp is None:
        return None, {}
    old = old_logp if old_logp is not None else logp.detach()
    bounds = MismatchBounds(algo.tis_cap, algo.tis_floor)
    weight, metrics = mismatch_weights(algo.is_correction, old, piece.sampler_logp, piece.completion_mask, bounds)
    return (weight if algo.tis_cap is not None else None), metrics


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)
