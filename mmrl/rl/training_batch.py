"""What the policy update trains on: the step's groups with their advantages, micro-batch plan, no-grad log-probs and
entropy controls, decided once before the first training forward and frozen from there.

`training_batch` runs the step's phases between the rollout and the update in one order, wherever the KL goes:

    plan        each group's micro-batches (`mmrl.rl.step_logprobs.plan_micro_batches`)
    log-probs   those the rewards need: every group's old and reference log-probs when the KL goes into the reward
    advantages  over every process's groups (`mmrl.rl.step_advantages`)
    log-probs   those the loss needs, of the groups it trains on (a group whose loss is exactly 0 whatever the ratio
                — all-zero advantages, no KL term in the loss, no entropy bonus or measurement — needs none: its
                forwards are skipped as a speed-up only); none is computed twice
    entropy     the step's bonus coefficient and top-entropy token selection (`mmrl.rl.entropy.plan_entropy`)

Every forward of the step runs without dropout (`disable_dropout`), so the first ratio of a mu > 1 update is exactly 1.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from mmrl.models.compile import compiled_decoder_layers
from mmrl.models.dropout import disable_dropout
from mmrl.models.vision_tower import count_vision, vision_module
from mmrl.rl.entropy import EntropyStep, FixedEntropy, entropy_control, plan_entropy
from mmrl.rl.experience import Group
from mmrl.rl.losses import PolicyLoss, loss_mask
from mmrl.rl.micro_batches import MicroBatch
from mmrl.rl.reference import ReferencePolicy
from mmrl.rl.stages import ResolvedStage
from mmrl.rl.step_advantages import kl_in_reward, step_advantages
from mmrl.rl.step_logprobs import GroupLogProbs, group_logprobs, needs_old_logprobs, plan_micro_batches
from mmrl.runs.training_run import TrainingRun


@dataclass(frozen=True)
class TrainingGroup:
    """One group as the update trains on it."""

    group: Group  # the rollout and its rewards
    advantages: torch.Tensor  # [G]
    parts: tuple[MicroBatch, ...]  # its micro-batches: the old/reference log-probs and every pass cut it this way
    # which rows have a zero advantage, read on the host once for the whole step, before the first forward: asking
    # the device at each micro-batch made the host wait for the previous backward to finish
    zero_advantage: tuple[bool, ...]
    old_logp: torch.Tensor | None = None  # [G, T] None: the training forward's own (on-policy, ratio 1)
    ref_logp: torch.Tensor | None = None  # [G, T] with a KL term in the loss
    entropy_selection: torch.Tensor | None = None  # [G, T] 1 on the top-entropy tokens (None: every token)

    def has_signal(self, part: MicroBatch | None = None) -> bool:
        """Whether some advantage of the group (or of `part`'s rows of it) is not 0."""
        if part is None or part.whole:
            return not all(self.zero_advantage)
        return not all(self.zero_advantage[row] for row in (part.host_rows or part.rows.tolist()))

    def trained_tokens(self, mask: torch.Tensor) -> torch.Tensor:
        """The tokens the policy gradient (and the entropy bonus) train on: the loss mask [G, T], restricted to the
        top-entropy tokens when that selection is on."""
        selection = self.entropy_selection
        return mask if selection is None else mask * selection.to(mask.device, mask.dtype)


@dataclass(frozen=True)
class TrainingBatch:
    """This process's share of one step, ready for `mmrl.rl.update.policy_update`."""

    groups: tuple[TrainingGroup, ...]
    # a KL term in the loss or this step's entropy bonus: a group with all-zero advantages still trains (a token
    # selection alone, or an adaptive coefficient gated off this step, leaves its loss exactly 0)
    every_group: bool
    entropy_coef: float = 0.0  # the entropy bonus coefficient this step applies
    metrics: dict[str, float] = field(default_factory=dict)  # the KL in the reward, the entropy controls
    vision: dict[str, Any] = field(default_factory=dict)  # vision-tower counters of the forwards above

    def trains(self, group: TrainingGroup, part: MicroBatch | None = None) -> bool:
        """False when `group`'s loss (or `part`'s rows of it) is exactly 0 whatever the ratio: no forward runs."""
        return self.every_group or group.has_signal(part)


def training_batch(
    run: TrainingRun,
    groups: list[Group],
    stage: ResolvedStage,
    reference: ReferencePolicy | None,
    entropy: FixedEntropy | None = None,
) -> TrainingBatch:
    """The step's phases between the rollout and the update (module doc), on this process's `groups`. `entropy`: the
    run's entropy control, whose state carries over steps (None: a fresh one from the config)."""
    algo = run.cfg.algorithm
    control = entropy if entropy is not None else entropy_control(algo)
    disable_dropout(run.model)
    in_reward, in_loss = kl_in_reward(algo), PolicyLoss.from_config(algo).beta > 0
    # the step's first forward measures every group's token entropies when the coefficient or the token selection
    # reads them (a fixed coefficient does not: no extra forward for it)
    measure = control.reads_entropy or algo.top_entropy_quantile < 1
    need_old = needs_old_logprobs(run, in_reward)
    plan = plan_micro_batches(run, groups)
    logprobs: list[GroupLogProbs | None] = [None] * len(groups)
    vision: dict[str, Any] = {}  # the policy tower's passes; `vision_reused`: the rollout's features served instead

    def forwards(indices: Iterable[int]) -> None:
        for i in indices:
            logprobs[i] = group_logprobs(run, groups[i], plan[i], reference, need_old, measure, vision)

    # every process gets here once per step: FSDP2 gathers a sharded reference for the step's reference forwards
    with (
        count_vision(vision_module(run.model), vision),
        compiled_decoder_layers(run.model, run.cfg.model.compile),
        torch.no_grad(),
        run.engine.reference_gathered(),
    ):
        forwards(range(len(groups)) if in_reward else ())  # the log-probs the rewards need
        advantages, metrics = step_advantages(run, groups, logprobs, stage.rewards)
        zero = torch.cat([a == 0 for a in advantages]).tolist() if groups else []  # one read for all groups
        starts = [sum(len(a) for a in advantages[:i]) for i in range(len(groups) + 1)]
        zero_rows = [tuple(zero[starts[i] : starts[i + 1]]) for i in range(len(groups))]
        every_group = in_loss or measure or control.active  # else a group of all-zero advantages needs no forward
        # the log-probs the loss needs (none is computed twice)
        forwards(i for i in range(len(groups)) if logprobs[i] is None and (every_group or not all(zero_rows[i])))
    step_entropy = EntropyStep(coef=control.coef, metrics={"entropy/coef": control.coef} if control.active else {})
    if measure:
        entropies = {i: lp.entropy for i, lp in enumerate(logprobs) if lp is not None and lp.entropy is not None}
        masks = {i: loss_mask(g.completion_mask, g.truncated, algo.mask_truncated) for i, g in enumerate(groups)}
        step_entropy = plan_entropy(entropies, masks, control, algo.top_entropy_quantile, run.dist.world_size)
    trained = tuple(
        TrainingGroup(
            group=group,
            advantages=advantages[i],
            parts=plan[i],
            zero_advantage=zero_rows[i],
            old_logp=None if logprobs[i] is None else logprobs[i].old,
            ref_logp=None if logprobs[i] is None else logprobs[i].ref,
            entropy_selection=step_entropy.mask_of(i),
        )
        for i, group in enumerate(groups)
    )
    return TrainingBatch(
        groups=trained,
        every_group=in_loss or step_entropy.coef > 0,
        entropy_coef=step_entropy.coef,
        metrics={**metrics, **step_entropy.metrics},
        vision=vision,
    )
