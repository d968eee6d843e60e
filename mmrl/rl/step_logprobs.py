"""The step's no-grad forwards before its training passes: each group's micro-batch plan, then the rollout policy's
("old") and the reference's log-probs and the old forward's token entropies, computed in those micro-batches.

A micro-batch (one forward) is one group, or with `trainer.max_tokens_per_micro_batch` some rows of one group within
that many tokens (`mmrl.rl.micro_batches`); the old and reference log-probs are computed in the same pieces as the
training forwards, so the plan is made once per step and kept with each group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mmrl.models.logprobs import completion_logprobs, recording_entropy
from mmrl.models.prefix import supports_prefix_sharing
from mmrl.models.training_forward import reuse_image_features
from mmrl.rl.entropy import per_token_entropy
from mmrl.rl.experience import Group
from mmrl.rl.micro_batches import MicroBatch, by_micro_batches, micro_batches
from mmrl.rl.reference import ReferencePolicy
from mmrl.runs.training_run import TrainingRun


@dataclass(frozen=True)
class GroupLogProbs:
    """One group's no-grad forwards, [G, T] each; None where the step does not need them."""

    old: torch.Tensor | None = None  # the rollout policy's (the weights before the step's first optimizer step)
    ref: torch.Tensor | None = None  # the reference's (beta > 0)
    entropy: torch.Tensor | None = None  # the old forward's token entropies (the entropy controls read them)


def plan_micro_batches(run: TrainingRun, groups: list[Group]) -> list[tuple[MicroBatch, ...]]:
    """Each group's micro-batches under `trainer.max_tokens_per_micro_batch` (one whole group without it), in the
    groups' order. The plan reads only the completions and the prompt, which nothing changes during the step."""
    budget, prompt_per_row = run.cfg.trainer.max_tokens_per_micro_batch, not supports_prefix_sharing(run.model)
    return [tuple(micro_batches(group, budget, prompt_per_row=prompt_per_row)) for group in groups]


def needs_old_logprobs(run: TrainingRun, kl_in_reward: bool) -> bool:
    """Old log-probs when the policy moves between passes (mu > 1 or several mini-batches) or when the KL goes into
    the reward (k1 of the rollout policy); otherwise the training forward's own log-probs are the old ones."""
    algo = run.cfg.algorithm
    return algo.num_iterations > 1 or algo.mini_batches > 1 or kl_in_reward


def group_logprobs(
    run: TrainingRun,
    group: Group,
    parts: tuple[MicroBatch, ...],
    reference: ReferencePolicy | None,
    need_old: bool,
    measure_entropy: bool,
    counters: dict[str, Any],
) -> GroupLogProbs:
    """`group`'s old log-probs (when `need_old`), reference log-probs (with a reference) and old-forward token
    entropies (when `measure_entropy`: the old forward runs for them even when the old log-probs are not kept).
    Runs without gradients; the caller holds the reference gathered (FSDP2)."""
    temperature = run.cfg.rollout.temperature
    old = ref = entropy = None
    with torch.no_grad():
        if measure_entropy:
            logp, entropy = _logprobs_and_entropy(run.model, group, parts, temperature, counters)
            old = logp if need_old else None
        elif need_old:
            old = by_micro_batches(parts, group, lambda g: _logprobs(run.model, g, temperature, counters))
        if reference is not None:
            ref = by_micro_batches(parts, group, lambda g: _reference_logprobs(reference, g, temperature))
    return GroupLogProbs(old=old, ref=ref, entropy=entropy)


def _logprobs(model: Any, group: Group, temperature: float, counters: dict[str, Any] | None = None) -> torch.Tensor:
    with reuse_image_features(model, group.image_features, counters):  # frozen tower: the rollout's features
        return completion_logprobs(
            model, group.prompt, group.completion_ids, group.completion_mask, temperature=temperature
        )


def _reference_logprobs(reference: ReferencePolicy, group: Group, temperature: float) -> torch.Tensor:
    return reference(
        group.prompt,
        group.completion_ids,
        group.completion_mask,
        temperature=temperature,
        image_features=group.image_features,
    )


def _logprobs_and_entropy(
    model: Any, group: Group, parts: Sequence[MicroBatch], temperature: float, counters: dict[str, Any] | None
) -> tuple[torch.Tensor, torch.Tensor]:
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
