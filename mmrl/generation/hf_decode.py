"""The shared-prefix decode loop: several prompts, each prefilled once, all their branches decoded as one batch.

Each prompt is run once (its images vision-encoded once) into its own KV cache; the caches are repeated n times and
left padded to the longest prompt into one batch cache (`mmrl.models.prefix.stack_prefixes`). Every decode step then
runs all live branches of all prompts in one forward: a 2-D attention mask hides the padding, and each row gets its
own M-RoPE position (its prompt's length + step + its prompt's rope delta). Branches that finish are dropped from the
cache, and padding columns no live row needs any more are cut off.

Sampling draws each prompt's rows from that prompt's own generator, so a prompt's completions are the same whichever
prompts share its batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mmrl.generation.token_sampling import sample_next
from mmrl.generation.types import SamplingParams
from mmrl.models.placement import model_device
from mmrl.models.prefix import (
    Prefix,
    can_stack,
    continue_from,
    drop_leading_slots,
    rollout_cache,
    run_prefix,
    stack_prefixes,
    unwrap,
)


@dataclass
class Row:
    ids: torch.Tensor  # [L]: the generated tokens, the finishing one included
    logprobs: torch.Tensor | None  # [L]
    finished: bool  # ended by an end-of-turn / stop id / stop string (else it hit max_new_tokens)


@dataclass
class DecodeRules:
    """What ends or forbids a token: the backend's token rules for one call."""

    pad_id: int
    stop_ids: list[int]
    banned_ids: list[int]
    # (tokens [rows, steps], alive [A], step, stop strings) -> [A] bool: the row's text now holds a stop string
    hit_stop: Callable[[torch.Tensor, torch.Tensor, int, Sequence[str]], torch.Tensor]


def _pick(logits: torch.Tensor, owner: torch.Tensor, streams: Sequence[torch.Generator | None], params: SamplingParams,
          forbid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next token and its log-prob for every live row [A, V]; row r draws from the stream of its prompt `owner[r]`.
    Greedy rows need no stream, so they go through in one call."""
    options = {"temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k, "forbid": forbid}
    if params.greedy or len(streams) == 1:
        return sample_next(logits, generator=streams[0], **options)
    chosen = torch.empty(logits.shape[0], dtype=torch.long, device=logits.device)
    logp = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
    for prompt in torch.unique(owner).tolist():  # ascending: the same draw order whatever else shares the batch
        rows = (owner == prompt).nonzero().view(-1)
        chosen[rows], logp[rows] = sample_next(logits[rows], generator=streams[prompt], **options)
    return chosen, logp


@torch.no_grad()
def decode_shared_prefix(model: Any, prompts: Sequence[dict[str, Any]], params: SamplingParams,
                         streams: Sequence[torch.Generator | None], rules: DecodeRules, counters: dict[str, Any],
                         on_token: Callable[[int], None] | None = None) -> list[Row]:
    """`params.n` completions for each prompt (processor outputs on the model's device, batch dim 1), all decoded
    together; rows come back prompt-major (row i*n + j is prompt i's j-th branch). `streams[i]` is prompt i's
    generator (one entry: shared by all, as for greedy decoding)."""
    prefixes = []
    for prompt in prompts:
        prefixes.append(run_prefix(model, prompt, cache=rollout_cache(model)))  # bf16 keys/values under autocast
        counters["prefill_tokens"] += prefixes[-1].length
    if len(prefixes) > 1 and not all(can_stack(p.cache) for p in prefixes):
        # A cache that cannot be left padded (sliding-window layers): each prompt decodes on its own.
        return [row for i, prefix in enumerate(prefixes)
                for row in _decode(model, [prefix], params, streams[i:i + 1] if len(streams) > 1 else streams, rules,
                                   counters, on_token)]
    return _decode(model, prefixes, params, streams, rules, counters, on_token)


def _decode(model: Any, prefixes: list[Prefix], params: SamplingParams, streams: Sequence[torch.Generator | None],
            rules: DecodeRules, counters: dict[str, Any], on_token: Callable[[int], None] | None) -> list[Row]:
    n, steps = params.n, params.max_new_tokens
    lm_head = unwrap(model).lm_head
    device = model_device(model)
    stop_ids = torch.tensor(rules.stop_ids, dtype=torch.long, device=device)
    banned = torch.tensor(rules.banned_ids, dtype=torch.long, device=device)
    banned_and_stop = torch.cat([banned, stop_ids])
    temperature = params.temperature
    counters.setdefault("decode_steps", 0)
    # One LM-head call per prompt, as a prompt alone gets (a batched matmul may round differently).
    logits = torch.cat([lm_head(p.last_hidden) for p in prefixes]).float().repeat_interleave(n, dim=0)
    cache, pad = stack_prefixes(prefixes, n)  # pad [rows]: left padding of each row's prompt
    start = torch.tensor([p.length for p in prefixes], dtype=torch.long, device=device).repeat_interleave(n)
    delta = torch.cat([p.rope_delta.view(1) for p in prefixes]).to(device).repeat_interleave(n)
    owner = torch.arange(len(prefixes), device=device).repeat_interleave(n)
    slots = max(p.length for p in prefixes)  # cache width before decoding: the longest prompt
    rows = len(prefixes) * n
    tokens = torch.full((rows, steps), rules.pad_id, dtype=torch.long, device=device)
    scores = torch.zeros(rows, steps, device=device)
    lengths = torch.full((rows,), steps, dtype=torch.long, device=device)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    alive = torch.arange(rows, device=device)  # rows still decoding; the cache holds only them, in this order
    cut = 0  # leading padding slots already removed from the cache
    for step in range(steps):
        # Entropy of the sampling distribution, for the metrics (one extra softmax per decode step).
        tempered = torch.log_softmax(logits / (temperature if temperature > 0 else 1.0), dim=-1)
        counters["entropy_sum"] = counters.get("entropy_sum", 0.0) - float((tempered.exp() * tempered).sum())
        counters["entropy_tokens"] = counters.get("entropy_tokens", 0) + tempered.shape[0]
        chosen, logp = _pick(logits, owner[alive], streams, params,
                             banned_and_stop if step < params.min_new_tokens else banned)
        tokens[alive, step] = chosen
        scores[alive, step] = logp
        if on_token is not None:
            on_token(int(chosen[0]))
        done = torch.isin(chosen, stop_ids)
        if params.stop:
            done |= rules.hit_stop(tokens, alive, step, params.stop)
        lengths[alive[done]] = step + 1
        finished[alive[done]] = True
        still = ~done
        if step + 1 == steps or not bool(still.any()):
            break
        if not bool(still.all()):
            cache.batch_select_indices(still.nonzero().view(-1))
            alive, chosen = alive[still], chosen[still]
            unused = int(pad[alive].min()) - cut  # padding every live row has: its slots hold nothing anyone reads
            if unused > 0:
                drop_leading_slots(cache, unused)
                cut += unused
        row_pad = pad[alive] - cut
        mask = None
        if bool(row_pad.any()):
            width = slots - cut + step + 1  # cached slots + the token going in now
            mask = (torch.arange(width, device=device).view(1, -1) >= row_pad.view(-1, 1)).long()
        hidden = continue_from(model, cache, chosen[:, None], start[alive] + step, delta[alive].view(-1, 1), mask)
        logits = lm_head(hidden[:, -1]).float()
        counters["decode_steps"] += 1
    ends, done_rows = lengths.tolist(), finished.tolist()
    return [Row(tokens[i, : ends[i]], scores[i, : ends[i]], done_rows[i]) for i in range(rows)]
