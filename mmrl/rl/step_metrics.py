"""What one policy update reports: each training micro-batch's results, gathered into the step's metrics.

The update hands every micro-batch's `ForwardResult` here and each optimizer step's loss and grad norm; `StepTally`
turns them into the logged figures over every process (a rank alone sees its share; one may have run none):
`loss/*` (means over groups, a group's value token-weighted over its micro-batches), `rollout/*` (the sampler/trainer
mismatch), `loss`, `grad_norm`, `skipped_step`, `optimizer_steps` and the `update/*` counts.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch

from mmrl.parallel.distributed import all_gather_objects, all_reduce_sum
from mmrl.rl.mismatch import effective_sample_size

# the vision-tower counters of the update's forwards (`mmrl.models.vision_tower.count_vision`, and `vision_reused`:
# the rollout's features served instead), logged as update/<name>, summed over processes
VISION_COUNTERS = ("vision_encoder_calls", "vision_reused")


@dataclass(frozen=True)
class ForwardResult:
    """One training micro-batch's results. Its tensors stay on the device until the mini-batch's one host sync."""

    loss: torch.Tensor  # [] detached, before the world_size scaling of the backward
    tokens: torch.Tensor  # [] active loss tokens of these rows: what `metrics` are means over
    metrics: dict[str, float]
    mismatch: dict[str, float]  # sampler/trainer mismatch, measured on the first pass only (else empty)
    mismatch_tokens: torch.Tensor  # [] completion tokens of these rows: what `mismatch` is a mean over
    size: int  # tokens the forward held (`MicroBatch.tokens`)


def host_values(forwards: list[ForwardResult]) -> list[tuple[float, float, float]]:
    """(loss, tokens, mismatch tokens) of each forward as Python floats, in one device-to-host copy.

    Exact: a float32 (or wider) tensor holds the loss as is and the token counts (integers below 2**24) exactly."""
    if not forwards:
        return []
    dtype = functools.reduce(torch.promote_types, (f.loss.dtype for f in forwards), torch.float32)
    device = forwards[0].loss.device
    values = torch.stack(
        [
            torch.stack([f.loss.to(device, dtype), f.tokens.to(device, dtype), f.mismatch_tokens.to(device, dtype)])
            for f in forwards
        ]
    )
    return [(loss, tokens, mismatch_tokens) for loss, tokens, mismatch_tokens in values.tolist()]


def group_metrics(pieces: list[tuple[dict[str, float], float]]) -> dict[str, float]:
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


def mismatch_metrics(mismatch: dict[str, list[float]]) -> dict[str, float]:
    """`rollout/*` figures of the sampler/trainer mismatch: means over the groups, the max of the max."""
    return {f"rollout/{k}": (max(v) if k.endswith("_max") else sum(v) / len(v)) for k, v in mismatch.items() if v}


@dataclass
class StepTally:
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

    def add_groups(self, groups: list[list[ForwardResult]]) -> float:
        """Add one mini-batch's forwards (per group: its micro-batches'); returns their summed loss on this process."""
        values = iter(host_values([f for forwards in groups for f in forwards]))
        local_loss = 0.0
        for forwards in groups:
            # each piece's metrics and the tokens they are means over: one value per group (`group_metrics`)
            loss_pieces: list[tuple[dict[str, float], float]] = []
            mismatch_pieces: list[tuple[dict[str, float], float]] = []
            for forward in forwards:
                loss, tokens, mismatch_tokens = next(values)
                local_loss += loss
                self.forwards, self.most_tokens = self.forwards + 1, max(self.most_tokens, forward.size)
                loss_pieces.append((forward.metrics, tokens))
                if forward.mismatch and mismatch_tokens > 0:  # rows without a token measure no mismatch
                    mismatch_pieces.append((forward.mismatch, mismatch_tokens))
            for key, value in group_metrics(loss_pieces).items():
                self.sums[key] += value
                self.counts[key] += 1
            for key, value in effective_sample_size(group_metrics(mismatch_pieces)).items():
                self.mismatch[key].append(value)
        return local_loss

    def add_step(self, loss: float, grad_norm: float, stepped: bool) -> None:
        self.losses.append(loss)
        self.norms.append(grad_norm)
        self.stepped_all = self.stepped_all and stepped

    def summary(self, world: int, before: dict[str, float], vision: dict[str, Any] | None = None) -> dict[str, float]:
        """The step's metrics over every process's micro-batches, with `before` (what was measured before the
        training forwards: the KL in the reward, the entropy controls) and the `vision` counters. The sampler/trainer
        mismatch likewise: every process's groups, not rank 0's."""
        sums, counts = defaultdict(float), defaultdict(int)
        all_mismatch: dict[str, list[float]] = defaultdict(list)
        parts = all_gather_objects(
            (dict(self.sums), dict(self.counts), dict(self.mismatch), self.forwards, self.most_tokens), world
        )
        for part_sums, part_counts, part_mismatch, _, _ in parts:
            for key, value in part_sums.items():
                sums[key] += value
                counts[key] += part_counts[key]
            for key, values in part_mismatch.items():
                all_mismatch[key].extend(values)
        out = {f"loss/{k}": sums[k] / counts[k] for k in sums}
        out.update(before)
        out.update(mismatch_metrics(all_mismatch))
        out.update(
            {
                "loss": sum(self.losses) / len(self.losses),
                "grad_norm": sum(self.norms) / len(self.norms),
                "skipped_step": 0.0 if self.stepped_all else 1.0,
                "optimizer_steps": float(len(self.losses)),
                # every process's training forwards (all passes), and the largest one's tokens (micro_batches.py)
                "update/micro_batches": float(sum(p[3] for p in parts)),
                "update/micro_batch_tokens_max": float(max(p[4] for p in parts)),
            }
        )
        if vision is not None:
            out.update({f"update/{k}": float(all_reduce_sum(vision.get(k, 0), world)) for k in VISION_COUNTERS})
        return out
