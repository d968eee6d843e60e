"""The policy update for one step's groups: advantages, then mu passes over mini-batches, one backward per group.

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
- every policy forward (old log-probs and the training forward) runs without dropout, so the first ratio of a
  mu > 1 update is exactly 1;
- a micro-batch (one forward + backward) is one group, or with `trainer.max_tokens_per_micro_batch` some rows of one
  group within that many tokens (`mmrl.rl.micro_batches`: same loss, only the accumulation is split); the old and
  reference log-probs are computed in the same pieces (planned once per step). `update/micro_batches` counts the
  training forwards; their losses and token counts reach the host in one copy per mini-batch, not one per forward.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from mmrl.config.rl import AlgorithmConfig, RewardSpec
from mmrl.models.compile import compiled_decoder_layers
from mmrl.models.dropout import disable_dropout
from mmrl.models.logprobs import completion_logprobs, recording_entropy
from mmrl.models.prefix import supports_prefix_sharing
from mmrl.models.training_forward import reuse_image_features
from mmrl.models.vision_tower import count_vision, vision_module
from mmrl.parallel.distributed import all_reduce_sum, all_reduce_sum_tensor
from mmrl.rl.advantages import compute_advantages
from mmrl.rl.entropy import EntropyStep, FixedEntropy, entropy_bonus, entropy_control, per_token_entropy, plan_entropy
from mmrl.rl.experience import Group
from mmrl.rl.kl import sequence_kl
from mmrl.rl.losses import LossInputs, Normalisers, PolicyLoss, loss_mask
from mmrl.rl.micro_batches import MicroBatch, by_micro_batches, micro_batches
from mmrl.rl.mismatch import MismatchBounds, mismatch_weights
from mmrl.rl.reference import ReferencePolicy
from mmrl.rl.stages import ResolvedStage
from mmrl.rl.step_metrics import ForwardResult, StepTally
from mmrl.runs.training_run import TrainingRun


def split_groups(groups: list[Group], parts: int) -> list[list[Group]]:
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


def _logprobs(model: Any, group: Group, temperature: float, counters: dict[str, Any] | None = None) -> torch.Tensor:
    with reuse_image_features(model, group.image_features, counters):  # frozen tower: the rollout's features
        return completion_logprobs(model, group.prompt, group.completion_ids, group.completion_mask,
                                   temperature=temperature)


def _logprobs_and_entropy(model: Any, group: Group, parts: list[MicroBatch], temperature: float,
                          counters: dict[str, Any] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """`_logprobs` of `group` in its micro-batches, and the same forwards' token entropies [G, T]."""
    pieces: list[torch.Tensor] = []

    def forward(piece: Group) -> torch.Tensor:
        tap: list[torch.Tensor] = []
        with recording_entropy(tap):
            logp = _logprobs(model, piece, temperature, counters)
        pieces.append(per_token_entropy(tap, piece.completion_mask))
        return logp

    logp = by_micro_batches(parts, group, forward)
    return logp, by_micro_batches(parts, group, lambda piece: pieces.pop(0))  # the pieces again, in the same order


def _tis_weight(group: Group, logp: torch.Tensor, algo: AlgorithmConfig) -> tuple[torch.Tensor | None,
                                                                                  dict[str, float]]:
    """The `algorithm.is_correction` weights [G, T] when the rollout backend returned its sampler's log-probs and
    `tis_cap` is set (else None), against the trainer's log-probs of the rollout weights: `old_logp`, or this
    forward's when the update is on-policy (mu = 1, one mini-batch: the weights have not moved yet); and the mismatch
    metrics (empty without the sampler's log-probs)."""
    if group.sampler_logp is None:
        return None, {}
    old = group.old_logp if group.old_logp is not None else logp.detach()
    bounds = MismatchBounds(algo.tis_cap, algo.tis_floor)
    weight, metrics = mismatch_weights(algo.is_correction, old, group.sampler_logp, group.completion_mask, bounds)
    return (weight if algo.tis_cap is not None else None), metrics


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def _kl_in_reward(algo: AlgorithmConfig) -> bool:
    return algo.beta > 0 and algo.kl_penalty == "reward"


def _contributes(group: Group, every_group: bool) -> bool:
    """False when the group's loss is exactly 0 whatever the ratio (all-zero advantages, and no KL term or entropy
    bonus: `every_group`; before the update, also no entropy measurement, which reads every group): its forwards, old
    log-probs included, are skipped as a speed-up only."""
    return every_group or not bool((group.advantages == 0).all())


# id(group) -> its micro-batches: planned once per step (old/reference log-probs and every pass cut a group the same
# way; the plan reads only the completions and the prompt, which the update never changes)
MicroBatchPlan = dict[int, list[MicroBatch]]


def plan_micro_batches(run: TrainingRun, groups: list[Group]) -> MicroBatchPlan:
    """Each group's micro-batches under `trainer.max_tokens_per_micro_batch` (one whole group without it)."""
    budget, prompt_per_row = run.cfg.trainer.max_tokens_per_micro_batch, not supports_prefix_sharing(run.model)
    return {id(group): micro_batches(group, budget, prompt_per_row=prompt_per_row) for group in groups}


def prepare_old_and_ref(run: TrainingRun, groups: list[Group], plan: MicroBatchPlan,
                        reference: ReferencePolicy | None, counters: dict[str, Any] | None = None,
                        entropies: dict[int, torch.Tensor] | None = None) -> None:
    """Old log-probs when the policy moves between passes (mu > 1 or several mini-batches) or when the KL goes into
    the reward (k1 of the rollout policy); reference log-probs when beta > 0. Both in the training's micro-batches.
    With `entropies` (the entropy controls are on), each group's token entropies [G, T] of the same forward go there,
    keyed by id(group)."""
    algo, temperature = run.cfg.algorithm, run.cfg.rollout.temperature
    need_old = algo.num_iterations > 1 or algo.mini_batches > 1 or _kl_in_reward(algo)
    # every process gets here once per step: FSDP2 gathers a sharded reference for the step's reference forwards
    with torch.no_grad(), run.engine.reference_gathered():
        for group in groups:
            parts = plan[id(group)]
            if entropies is not None:
                old, entropies[id(group)] = _logprobs_and_entropy(run.model, group, parts, temperature, counters)
                group.old_logp = old if need_old else group.old_logp
            elif need_old:
                group.old_logp = by_micro_batches(parts, group, lambda g: _logprobs(run.model, g, temperature, counters))
            if reference is not None:
                group.ref_logp = by_micro_batches(parts, group, lambda g: reference(
                    g.prompt, g.completion_ids, g.completion_mask, temperature=temperature,
                    image_features=g.image_features))


def _reward_components(groups: list[Group], specs: Sequence[RewardSpec],
                       device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Each completion's score per reward [N, K] (NaN: unscorable) and the rewards' weights [K], in `specs` order."""
    columns = [torch.tensor([math.nan if v is None else float(v)
                             for group in groups for v in group.components.get(spec.name, [None] * len(group.texts))],
                            dtype=torch.float64, device=device) for spec in specs]
    n = sum(len(group.texts) for group in groups)
    matrix = torch.stack(columns, 1) if columns else torch.zeros(n, 0, dtype=torch.float64, device=device)
    return matrix, torch.tensor([spec.weight for spec in specs], dtype=torch.float64, device=device)


def assign_advantages(run: TrainingRun, groups: list[Group], reward_specs: Sequence[RewardSpec] = ()) -> dict[str,
                                                                                                           float]:
    """Set every group's advantages [G] from its rewards (minus beta * sequence KL when the KL is in the reward).

    `reward_specs` (the stage's rewards) give gdpo each reward's score and weight.
    Batch-level statistics (reinforce_pp's whitening, gdpo's, the KL metric) are summed over all processes, so every
    process takes part even with no groups. Returns {"loss/kl_mean": mean KL per active token} for KL-in-reward."""
    algo, world = run.cfg.algorithm, run.dist.world_size
    rewards, counts, kl_sum, kl_tokens = [], [], 0.0, 0.0
    for group in groups:
        mask = loss_mask(group.completion_mask, group.truncated, algo.mask_truncated)
        reward = group.rewards.double()
        if _kl_in_reward(algo):
            kl = sequence_kl(group.old_logp, group.ref_logp, group.completion_mask, algo.resolved_kl_estimator,
                             algo.kl_clamp).double()
            kl = kl.to(reward.device)
            reward = reward - algo.beta * kl
            kl_sum += float(kl.sum())
            kl_tokens += float(group.completion_mask.sum())
        rewards.append(reward)
        counts.append(mask.sum(-1).double().to(reward.device))
    device = rewards[0].device if rewards else torch.device("cpu")
    sizes = torch.tensor([len(r) for r in rewards], dtype=torch.long, device=device)
    all_rewards = torch.cat(rewards) if rewards else torch.zeros(0, dtype=torch.float64, device=device)
    group_ids = torch.arange(len(rewards), device=device).repeat_interleave(sizes)

    def reduce(t: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum_tensor(t, world)

    components, weights = _reward_components(groups, reward_specs, device)
    adv = compute_advantages(algo.advantage, all_rewards, group_ids, scale=algo.scale_rewards, eps=algo.std_eps,
                             token_counts=torch.cat(counts) if counts else None, all_reduce=reduce,
                             components=components, component_weights=weights)
    for i, group in enumerate(groups):
        group.advantages = adv[group_ids == i].to(group.rewards.dtype)
    if not _kl_in_reward(algo):
        return {}
    tokens = all_reduce_sum(kl_tokens, world)
    return {"loss/kl_mean": all_reduce_sum(kl_sum, world) / max(tokens, 1.0)}


def policy_update(run: TrainingRun, groups: list[Group], stage: ResolvedStage, reference: ReferencePolicy | None,
                  entropy: FixedEntropy | None = None) -> dict[str, float]:
    """Run the update; returns loss, grad norm and the loss-side metrics (means over micro-batches). `entropy`: the
    run's entropy control, whose state carries over steps (None: a fresh one from the config)."""
    cfg = run.cfg
    algo = cfg.algorithm
    disable_dropout(run.model)
    policy_loss = PolicyLoss.from_config(algo)  # the algorithm's loss settings, once: the loop passes tensors only
    entropy = entropy if entropy is not None else entropy_control(algo)
    # Vision-tower passes of the update (the policy's tower; `vision_reused`: the rollout's features served instead).
    vision: dict[str, Any] = {}
    with count_vision(vision_module(run.model), vision), compiled_decoder_layers(run.model, cfg.model.compile):
        return _update(run, groups, stage, reference, policy_loss, entropy, vision)


@dataclass(frozen=True)
class _UpdateContext:
    """What every training micro-batch of one step needs besides its group."""

    run: TrainingRun
    stage: ResolvedStage
    policy_loss: PolicyLoss
    every_group: bool  # a group with all-zero advantages still needs its forwards (`_contributes`)
    plan: MicroBatchPlan
    vision: dict[str, Any]
    entropy: EntropyStep
    # id(group) -> which of its rows have a zero advantage, read on the host once, before the first forward: asking
    # the device at each micro-batch made the host wait for the previous backward to finish
    zero_advantage: dict[int, list[bool]] = field(default_factory=dict)

    def contributes(self, group: Group, part: MicroBatch | None = None) -> bool:
        """`_contributes` of the group (or of `part`'s rows of it), from the host's copy of the advantages."""
        if self.every_group:
            return True
        zero = self.zero_advantage[id(group)]
        if part is None or part.whole:
            return not all(zero)
        return not all(zero[row] for row in (part.host_rows or part.rows.tolist()))


def _update(run: TrainingRun, groups: list[Group], stage: ResolvedStage, reference: ReferencePolicy | None,
            policy_loss: PolicyLoss, control: FixedEntropy, vision: dict[str, Any]) -> dict[str, float]:
    algo = run.cfg.algorithm
    # the step's first forward measures every group's token entropies when the coefficient or the token selection
    # reads them (a fixed coefficient does not: no extra forward for it)
    measure = control.reads_entropy or algo.top_entropy_quantile < 1
    every_group = policy_loss.beta > 0 or measure or control.active
    entropies: dict[int, torch.Tensor] | None = {} if measure else None
    if _kl_in_reward(algo):  # the rewards need the rollout policy's and the reference's log-probs first
        plan = plan_micro_batches(run, groups)
        prepare_old_and_ref(run, groups, plan, reference, vision, entropies)
        reward_metrics = assign_advantages(run, groups, stage.rewards)
    else:  # advantages first: a group that contributes nothing needs no old log-probs (nor a plan) either
        reward_metrics = assign_advantages(run, groups, stage.rewards)
        contributing = [g for g in groups if _contributes(g, every_group)]
        plan = plan_micro_batches(run, contributing)
        prepare_old_and_ref(run, contributing, plan, reference, vision, entropies)
    step_entropy = EntropyStep(coef=control.coef, metrics={"entropy/coef": control.coef} if control.active else {})
    if entropies is not None:
        masks = {id(g): loss_mask(g.completion_mask, g.truncated, algo.mask_truncated) for g in groups}
        step_entropy = plan_entropy(entropies, masks, control, algo.top_entropy_quantile, run.dist.world_size)
    reward_metrics = {**reward_metrics, **step_entropy.metrics}
    zero = torch.cat([g.advantages == 0 for g in groups]).tolist() if groups else []  # one read for all groups
    sizes = [len(g.advantages) for g in groups]
    starts = [sum(sizes[:i]) for i in range(len(groups))]
    # A group with all-zero advantages trains on nothing without a KL term or this step's bonus (a token selection
    # alone, or an adaptive coefficient gated off this step, leaves its loss exactly 0): its training forward is skipped.
    ctx = _UpdateContext(run, stage, policy_loss, policy_loss.beta > 0 or step_entropy.coef > 0, plan, vision,
                         step_entropy, zero_advantage={id(g): zero[a:a + n] for g, a, n in zip(groups, starts, sizes)})
    tally = StepTally()
    for iteration in range(algo.num_iterations):
        for mini in split_groups(groups, algo.mini_batches):
            # the mismatch is measured on the first pass, where the weights are the rollout's
            _train_mini_batch(ctx, mini, measure_mismatch=iteration == 0, tally=tally)
    return tally.summary(run.dist.world_size, reward_metrics, vision)


def _train_mini_batch(ctx: _UpdateContext, mini: list[Group], measure_mismatch: bool, tally: StepTally) -> None:
    """Every micro-batch of this process's share of one mini-batch (one backward each), then one optimizer step."""
    run, world, algo = ctx.run, ctx.run.dist.world_size, ctx.run.cfg.algorithm
    masks = [loss_mask(g.completion_mask, g.truncated, algo.mask_truncated) for g in mini]
    # the mini-batch's global counts (summed over processes) that every micro-batch's loss is normalised by
    norms = Normalisers(max_completion_length=ctx.stage.max_completion_length,
                        global_active_tokens=all_reduce_sum(sum(float(m.sum()) for m in masks), world),
                        global_num_sequences=int(all_reduce_sum(sum(m.shape[0] for m in masks), world)),
                        global_micro_batches=int(all_reduce_sum(len(mini), world)),
                        global_entropy_tokens=all_reduce_sum(sum(float(_trained(ctx, g, m).sum())
                                                                 for g, m in zip(mini, masks)), world))
    forwards: list[list[ForwardResult]] = []  # per group that contributes, its micro-batches'
    for group, mask in zip(mini, masks):
        # All-zero advantages and no KL term: the loss is exactly 0 whatever the ratio, so skip the forward
        # (a speed-up only: its tokens still count in the normalisers and the optimizer still steps).
        if not ctx.contributes(group):
            continue
        pieces = [_train_micro_batch(ctx, group, part, mask, norms, measure_mismatch) for part in ctx.plan[id(group)]]
        forwards.append([f for f in pieces if f is not None])
    step_loss = all_reduce_sum(tally.add_groups(forwards), world)
    grad_norm, stepped = run.optimizer_step(step_loss)
    tally.add_step(step_loss, grad_norm, stepped)


def _trained(ctx: _UpdateContext, group: Group, mask: torch.Tensor) -> torch.Tensor:
    """The tokens of `group` the policy gradient (and the entropy bonus) train on: its loss mask [G, T], restricted to
    the top-entropy tokens when that selection is on."""
    selection = ctx.entropy.mask_of(id(group))
    return mask if selection is None else mask * selection.to(mask.device, mask.dtype)


def _train_micro_batch(ctx: _UpdateContext, group: Group, part: MicroBatch, mask: torch.Tensor, norms: Normalisers,
                       measure_mismatch: bool) -> ForwardResult | None:
    """Forward, truncated-IS weights, loss and backward of one micro-batch of `group` (`mask`: the group's loss mask
    [G, T]); None when these rows' loss is exactly 0 (no forward runs)."""
    run, algo, policy_loss = ctx.run, ctx.run.cfg.algorithm, ctx.policy_loss
    piece = part.of(group)  # the group itself without a token budget
    if not ctx.contributes(group, part):
        return None
    tap: list[torch.Tensor] = []  # this forward's token entropies, when the step applies an entropy bonus
    with reuse_image_features(run.model, piece.image_features, ctx.vision), \
            (recording_entropy(tap) if ctx.entropy.coef > 0 else nullcontext()):
        logp = run.logprobs(piece.prompt, piece.completion_ids, piece.completion_mask, run.cfg.rollout.temperature)
    is_weight, mismatch = _tis_weight(piece, logp, algo)
    active = part.cut_mask(mask)
    selection = ctx.entropy.mask_of(id(group))
    per_token, metrics = policy_loss(LossInputs(logp, piece.old_logp, piece.advantages, active,
                                                ref_logp=piece.ref_logp, is_weight=is_weight,
                                                sampler_logp=piece.sampler_logp,
                                                entropy_mask=None if selection is None else part.cut_mask(selection)))
    # Aggregated as the group's loss restricted to these rows: the group's mask and the global normalisers, whatever
    # the aggregation (see mmrl.rl.micro_batches).
    loss = policy_loss.aggregate(part.scatter(per_token, mask.shape), mask, norms)
    if tap:  # minus c * this piece's share of the global mini-batch's mean entropy
        entropy = per_token_entropy(tap, piece.completion_mask)
        trained = part.cut_mask(_trained(ctx, group, mask)).to(entropy.device)
        loss = loss + entropy_bonus(entropy, trained, ctx.entropy.coef, norms.global_entropy_tokens or 0.0)
        metrics = {**metrics, "entropy": float(_masked_mean(entropy.detach(), active.to(entropy.device)))}
    (loss * run.dist.world_size).backward()
    return ForwardResult(loss=loss.detach(), tokens=active.sum(), metrics={k: float(v) for k, v in metrics.items()},
                    mismatch=mismatch if measure_mismatch else {}, mismatch_tokens=piece.completion_mask.sum(),
                    size=part.tokens)
