"""Token-budget micro-batches: how the update cuts one prompt's group of G completions into training forwards.

Without a budget (`trainer.max_tokens_per_micro_batch: null`) a micro-batch is one whole group, as the training
forward was built for: the prompt (and its image) runs once and its keys/values serve all G completions.

With a budget, a micro-batch still holds completions of ONE prompt (the forward shares that prompt's prefix), and
counts these tokens against the budget:
    prompt tokens (text and image placeholders; once per micro-batch, since each forward runs the prompt once)
    + rows x the longest completion among its rows (the padded width the forward computes; columns past it are cut).
Models without prefix sharing run G full sequences (the naive forward), so there the prompt counts once per row.
Rows are sorted longest first and packed greedily, so short completions share a micro-batch and long ones spread.
A single completion over the budget goes alone (one row per micro-batch): lengths are known only after the rollout,
so an error there would end a run hours in for one long completion.

Why the loss stays exact: each micro-batch's per-token loss is written back into a zero tensor of its group's shape
[G, T] (`MicroBatch.scatter`) and aggregated with the group's mask and the step's global normalisers. Every
aggregation of `mmrl.rl.aggregations` (grpo's per-sequence means, dr_grpo's and dapo's global denominators, bnpo's token
mean of the group) is then the group's loss restricted to those rows, and the micro-batches' gradients add up to the
group's. Only float summation order differs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from mmrl.rl.experience import Group


def pack_rows(lengths: list[int], prompt_tokens: int, budget: int | None,
              prompt_per_row: bool = False) -> list[tuple[list[int], int, int]]:
    """Pack completion rows of one prompt into micro-batches: [(rows, width, tokens)], rows in the order packed.

    `lengths`: active tokens of each completion; `width`: the longest completion of the micro-batch (at least 1);
    `tokens`: what it counts against `budget` (see the module doc). `budget` None: one micro-batch of every row.

    >>> pack_rows([3, 6, 2, 6], prompt_tokens=4, budget=16)
    [([1, 3], 6, 16), ([0, 2], 3, 10)]
    >>> pack_rows([9, 1], prompt_tokens=4, budget=5)  # a completion over the budget goes alone
    [([0], 9, 13), ([1], 1, 5)]
    """
    def cost(rows: int, width: int) -> int:
        return _cost(rows, width, prompt_tokens, prompt_per_row)

    if budget is None:
        width = max(max(lengths, default=1), 1)
        return [(list(range(len(lengths))), width, cost(len(lengths), width))]
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable: equal lengths keep their order
    packed: list[tuple[list[int], int, int]] = []
    rows: list[int] = []
    width = 1
    for i in order:
        if rows and cost(len(rows) + 1, width) > budget:  # widths only shrink from here: the first row sets it
            packed.append((rows, width, cost(len(rows), width)))
            rows = []
        if not rows:
            width = max(lengths[i], 1)
        rows.append(i)
    if rows:
        packed.append((rows, width, cost(len(rows), width)))
    return packed


def _cost(rows: int, width: int, prompt_tokens: int, prompt_per_row: bool) -> int:
    return rows * (prompt_tokens + width) if prompt_per_row else prompt_tokens + rows * width


@dataclass(frozen=True)
class MicroBatch:
    """Some rows of one group, cut to `width` columns. `whole`: every row and column (no budget): the group as is."""

    rows: torch.Tensor  # [n] long, indices into the group's G rows, on the group's device
    width: int
    tokens: int
    whole: bool
    host_rows: tuple[int, ...] = ()  # `rows` on the host: reading them back between backwards would sync the device

    def of(self, group: Group) -> Group:
        """The group restricted to these rows and columns (every per-row and per-token tensor sliced)."""
        if self.whole:
            return group

        def cut(t: torch.Tensor | None, per_token: bool = True) -> torch.Tensor | None:
            if t is None or t.numel() == 0:  # nothing to cut (no completion column): kept as it is
                return t
            return self.cut_mask(t) if per_token else self.cut_rows(t)

        rows = group.prompt.get("episode_rows")  # multi-turn episodes: per-row images (mmrl.rl.episodes)
        prompt = group.prompt if rows is None else {**group.prompt, "episode_rows": [rows[i] for i in self.rows.tolist()]}
        return dataclasses.replace(
            group, prompt=prompt, completion_ids=cut(group.completion_ids), completion_mask=cut(group.completion_mask),
            truncated=cut(group.truncated, per_token=False), sampler_logp=cut(group.sampler_logp),
            texts=[group.texts[i] for i in (self.host_rows or self.rows.tolist())] if group.texts else group.texts,
            rewards=cut(group.rewards, per_token=False))

    def cut_mask(self, mask: torch.Tensor | None) -> torch.Tensor | None:
        """A group-shaped [G, T] tensor restricted to this micro-batch ([n, width]); None stays None."""
        if self.whole or mask is None:
            return mask
        return mask.index_select(0, self.rows.to(mask.device))[:, : self.width]

    def cut_rows(self, values: torch.Tensor | None) -> torch.Tensor | None:
        """A per-row [G] tensor (advantages, rewards) restricted to this micro-batch's rows ([n]); None stays None."""
        if self.whole or values is None:
            return values
        return values.index_select(0, self.rows.to(values.device))

    def scatter(self, values: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """This micro-batch's [n, width] values written into zeros of the group's shape [G, T] (differentiable)."""
        if self.whole:
            return values
        padded = torch.nn.functional.pad(values, (0, shape[1] - values.shape[1]))
        return values.new_zeros(shape).index_copy(0, self.rows.to(values.device), padded)


def micro_batches(group: Group, budget: int | None, prompt_per_row: bool = False) -> list[MicroBatch]:
    """The training forwards of `group` under `budget` tokens (see the module doc); one `whole` one without a budget."""
    ids = group.completion_ids
    prompt_tokens = int(group.prompt["input_ids"].shape[-1])
    if budget is None:
        rows = torch.arange(ids.shape[0], device=ids.device)
        tokens = _cost(ids.shape[0], ids.shape[1], prompt_tokens, prompt_per_row)
        return [MicroBatch(rows=rows, width=ids.shape[1], tokens=tokens, whole=True)]
    # a row's length: up to its last active position (right padding makes that its token count; a mask with holes
    # must not lose the tokens past a hole when the columns are cut)
    positions = torch.arange(1, ids.shape[1] + 1, device=ids.device)
    lengths = (group.completion_mask.bool() * positions).amax(-1).tolist() if ids.shape[1] else [0] * ids.shape[0]
    packed = pack_rows(lengths, prompt_tokens, budget, prompt_per_row)
    return [MicroBatch(rows=torch.tensor(rows, dtype=torch.long, device=ids.device), width=width, tokens=tokens,
                       whole=False, host_rows=tuple(rows)) for rows, width, tokens in packed]


def by_micro_batches(parts: Sequence[MicroBatch], group: Group, forward: Callable[[Group], torch.Tensor]) -> torch.Tensor:
    """A no-grad [G, T] result (old or reference log-probs) computed micro-batch by micro-batch: `forward(piece)`
    gives [n, width] for a piece of the group; positions outside every piece's columns are 0 (inactive anyway)."""
    if len(parts) == 1 and parts[0].whole:
        return forward(group)
    out: torch.Tensor | None = None
    for part in parts:
        values = forward(part.of(group))
        if out is None:
            out = values.new_zeros(group.completion_ids.shape)
        out[part.rows.to(out.device), : part.width] = values
    assert out is not None
    return out
