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

import functools
import math
from collections import defaultdict
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from mmrl.config.rl import AlgorithmConfig, RewardSpec
from mmrl.models.compile import compiled_decoder_layers
from mmrl.models.logprobs import completion_logprobs, recording_entropy
from mmrl.models.prefix import supports_prefix_sharing
from mmrl.models.training_forward import reuse_image_features
from mmrl.models.vision_tower import count_vision, vision_module
from mmrl.parallel.distributed import all_gather_objects, all_reduce_sum, all_reduce_sum_tensor
from mmrl.rl.advantages import compute_advantages
from mmrl.rl.entropy import EntropyStep, FixedEntropy, entropy_bonus, entropy_control, per_token_entropy, plan_entropy
from mmrl.rl.experience import Group
from mmrl.rl.kl import sequence_kl
from mmrl.rl.losses import LossInputs, Normalisers, PolicyLoss, loss_mask
from mmrl.rl.micro_batches import MicroBatch, by_micro_batches, micro_batches
from mmrl.rl.mismatch import MismatchBounds, effective_sample_size, mismatch_weights
from mmrl.rl.reference import ReferencePolicy
from mmrl.rl.stages import ResolvedStage
from mmrl.runs.training_run import TrainingRun


def disable_dropout(model: torch.nn.Module) -> None:
    """Zero every dropout of `model` (dropout modules, LoRA's included, and attention-dropout rates read at forward
    time: `attention_dropout`, or `dropout` as SigLIP/Idefics3 attention name it). The RL update needs the policy's
    forward deterministic: with dropout the old and new log-probs of the same weights differ, so the importance ratio
    is not 1 where it must be. Idempotent."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = 0.0
        for rate in ("attention_dropout", "dropout"):
            if isinstance(getattr(module, rate, None), float):
                setattr(module, rate, 0.0)


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


def _mismatch_metrics(mismatch: dict[str, list[float]]) -> dict[str, float]:
    """`rollout/*` figures of the sampler/trainer mismatch: means over the groups, the max of the max."""
    return {f"rollout/{k}": (max(v) if k.endswith("_max") else sum(v) / len(v)) for k, v in mismatch.items() if v}


def _group_metrics(pieces: list[tuple[dict[str, float], float]]) -> dict[str, float]:
    """One group's metrics from its micro-batches' (metrics, active tokens): token-weighted means (the max for
    `*_max`), so a token budget reports what one forward of the whole group reports (a plain mean over pieces would
    count a piece of one token, or of masked-out truncated rows, as much as a full one)."""
    if len(pieces) <= 1:
        return dict(pieces[0][0]) if pieces else {}
    total = sum(tokens for _, tokens in pieces)
    out: dict[str, float] = {}
    for key in dict.fromkeys(k for metrics, _ in pieces for k in metrics):
        values = [(metrics[key], tokens) for metrics, tokens in pieces if key in metrics]
        if key.endswith("_max"):
            out[key] = max(v for v, _ in values)
        elif total > 0:
            out[key] = sum(v * t for v, t in values) / total
        else:
            out[key] = sum(v for v, _ in values) / len(values)
    return out


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
    cfg, world = run.cfg, run.dist.world_size
    algo = cfg.algorithm
    disable_dropout(run.model)
    policy_loss = PolicyLoss.from_config(algo)  # the algorithm's loss settings, once: the loop passes tensors only
    entropy = entropy if entropy is not None else entropy_control(algo)
    # Vision-tower passes of the update (the policy's tower; `vision_reused`: the rollout's features served instead).
    vision: dict[str, Any] = {}
    with count_vision(vision_module(run.model), vision), compiled_decoder_layers(run.model, cfg.model.compile):
        out = _update(run, groups, stage, reference, policy_loss, entropy, vision)
    out.update({f"update/{k}": float(all_reduce_sum(vision.get(k, 0), world))
                for k in ("vision_encoder_calls", "vision_reused")})
    return out


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


@dataclass(frozen=True)
class _Forward:
    """One training micro-batch's results. Its tensors stay on the device until the mini-batch's one host sync."""

    loss: torch.Tensor  # [] detached, before the world_size scaling of the backward
    tokens: torch.Tensor  # [] active loss tokens of these rows: what `metrics` are means over
    metrics: dict[str, float]
    mismatch: dict[str, float]  # sampler/trainer mismatch, measured on the first pass only (else empty)
    mismatch_tokens: torch.Tensor  # [] completion tokens of these rows: what `mismatch` is a mean over
    size: int  # tokens the forward held (`MicroBatch.tokens`)


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
    tally = _Tally()
    for iteration in range(algo.num_iterations):
        for mini in split_groups(groups, algo.mini_batches):
            # the mismatch is measured on the first pass, where the weights are the rollout's
            _train_mini_batch(ctx, mini, measure_mismatch=iteration == 0, tally=tally)
    return tally.summary(run.dist.world_size, reward_metrics)


def _train_mini_batch(ctx: _UpdateContext, mini: list[Group], measure_mismatch: bool, tally: _Tally) -> None:
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
    forwards: list[list[_Forward]] = []  # per group that contributes, its micro-batches'
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
                       measure_mismatch: bool) -> _Forward | None:
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
    return _Forward(loss=loss.detach(), tokens=active.sum(), metrics={k: float(v) for k, v in metrics.items()},
                    mismatch=mismatch if measure_mismatch else {}, mismatch_tokens=piece.completion_mask.sum(),
                    size=part.tokens)


def _host_values(forwards: list[_Forward]) -> list[tuple[float, float, float]]:
    """(loss, tokens, mismatch tokens) of each forward as Python floats, in one device-to-host copy.

    Exact: a float32 (or wider) tensor holds the loss as is and the token counts (integers below 2**24) exactly."""
    if not forwards:
        return []
    dtype = functools.reduce(torch.promote_types, (f.loss.dtype for f in forwards), torch.float32)
    device = forwards[0].loss.device
    values = torch.stack([torch.stack([f.loss.to(device, dtype), f.tokens.to(device, dtype),
                                       f.mismatch_tokens.to(device, dtype)]) for f in forwards])
    return [(loss, tokens, mismatch_tokens) for loss, tokens, mismatch_tokens in values.tolist()]


@dataclass
class _Tally:
    """What this process's update reports, accumulated mini-batch by mini-batch: each group's loss-side metrics,
    the sampler/trainer mismatch, the forwards run, and each optimizer step's loss, grad norm and outcome."""

    sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    mismatch: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    forwards: int = 0
    most_tokens: int = 0  # the most tokens any training forward held
    losses: list[float] = field(default_factory=list)
    norms: list[float] = field(default_factory=list)
    stepped_all: bool = True

    def add_groups(self, groups: list[list[_Forward]]) -> float:
        """Add one mini-batch's forwards (per group: its micro-batches'); returns their summed loss on this process."""
        values = iter(_host_values([f for forwards in groups for f in forwards]))
        local_loss = 0.0
        for forwards in groups:
            # each piece's metrics and the tokens they are means over: one value per group (`_group_metrics`)
            loss_pieces: list[tuple[dict[str, float], float]] = []
            mismatch_pieces: list[tuple[dict[str, float], float]] = []
            for forward in forwards:
                loss, tokens, mismatch_tokens = next(values)
                local_loss += loss
                self.forwards, self.most_tokens = self.forwards + 1, max(self.most_tokens, forward.size)
                loss_pieces.append((forward.metrics, tokens))
                if forward.mismatch and mismatch_tokens > 0:  # rows without a token measure no mismatch
                    mismatch_pieces.append((forward.mismatch, mismatch_tokens))
            for key, value in _group_metrics(loss_pieces).items():
                self.sums[key] += value
                self.counts[key] += 1
            for key, value in effective_sample_size(_group_metrics(mismatch_pieces)).items():
                self.mismatch[key].append(value)
        return local_loss

    def add_step(self, loss: float, grad_norm: float, stepped: bool) -> None:
        self.losses.append(loss)
        self.norms.append(grad_norm)
        self.stepped_all = self.stepped_all and stepped

    def summary(self, world: int, reward_metrics: dict[str, float]) -> dict[str, float]:
        """The step's metrics over every process's micro-batches (a rank alone sees its share; one may have run
        none), with `reward_metrics`. The sampler/trainer mismatch likewise: every process's groups, not rank 0's."""
        sums, counts = defaultdict(float), defaultdict(int)
        all_mismatch: dict[str, list[float]] = defaultdict(list)
        parts = all_gather_objects((dict(self.sums), dict(self.counts), dict(self.mismatch), self.forwards,
                                    self.most_tokens), world)
        for part_sums, part_counts, part_mismatch, _, _ in parts:
            for key, value in part_sums.items():
                sums[key] += value
                counts[key] += part_counts[key]
            for key, values in part_mismatch.items():
                all_mismatch[key].extend(values)
        out = {f"loss/{k}": sums[k] / counts[k] for k in sums}
        out.update(reward_metrics)
        out.update(_mismatch_metrics(all_mismatch))
        out.update({"loss": sum(self.losses) / len(self.losses), "grad_norm": sum(self.norms) / len(self.norms),
                    "skipped_step": 0.0 if self.stepped_all else 1.0, "optimizer_steps": float(len(self.losses)),
                    # every process's training forwards (all passes), and the largest one's tokens (micro_batches.py)
                    "update/micro_batches": float(sum(p[3] for p in parts)),
                    "update/micro_batch_tokens_max": float(max(p[4] for p in parts))})
        return out
