"""The shared-prefix decode loop: several prompts, each prefilled once, all their branches decoded as one batch.

Each prompt is run once (its images vision-encoded once) into its own KV cache; the caches are repeated n times and
left padded to the longest prompt into one batch cache (`mmrl.models.prefix.stack_prefixes`). Every decode step then
runs all live branches of all prompts in one forward: a 2-D attention mask hides the padding, and each row gets its
own M-RoPE position (its prompt's length + step + its prompt's rope delta). Branches that finish are dropped from the
cache at the next look from the host (every `SYNC_EVERY` steps: the loop queues its kernels without waiting for the
device in between), and padding columns no live row needs any more are cut off.

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


# Decode steps between two looks from the host at the batch (the one device-to-host sync of those steps): finished
# rows leave the batch cache and the loop ends only then, so a row that finishes in between decodes up to
# SYNC_EVERY - 1 throwaway tokens (never kept), while the host queues the next steps' kernels without waiting for the
# GPU. Fixed step numbers, so which rows share a draw never depends on the other prompts of the batch.
SYNC_EVERY = 8


@dataclass
class _Live:
    """The rows still in the batch cache, in cache order (prompt-major: a prompt's rows stay together)."""

    rows: list[int]  # host: their row numbers (row i*n + j is prompt i's j-th branch)
    index: torch.Tensor  # the same on the device
    spans: list[tuple[int, int, int]] | None  # (prompt, first, end) cache positions per prompt; None: one stream

    @classmethod
    def of(cls, rows: list[int], n: int, device: torch.device, per_prompt: bool) -> _Live:
        spans = None
        if per_prompt:
            spans = []
            for position, row in enumerate(rows):
                if spans and spans[-1][0] == row // n:
                    spans[-1] = (spans[-1][0], spans[-1][1], position + 1)
                else:
                    spans.append((row // n, position, position + 1))
        return cls(rows, torch.tensor(rows, dtype=torch.long, device=device), spans)


def _pick(logits: torch.Tensor, spans: list[tuple[int, int, int]] | None, streams: Sequence[torch.Generator | None],
          params: SamplingParams, forbid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next token and its log-prob for every live row [A, V]; the rows of `spans` (prompt, first, end) draw from their
    prompt's stream, in ascending prompt order (the same draws whatever else shares the batch). Greedy rows, or one
    stream for all (`spans` None), go through in one call. No host sync: the spans are host numbers."""
    options = {"temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k, "forbid": forbid}
    if spans is None:
        return sample_next(logits, generator=streams[0], **options)
    chosen = torch.empty(logits.shape[0], dtype=torch.long, device=logits.device)
    logp = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
    for prompt, first, end in spans:
        chosen[first:end], logp[first:end] = sample_next(logits[first:end], generator=streams[prompt], **options)
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
    """The decode loop. The host reads the device once every SYNC_EVERY steps, or at every step for a caller who asked
    to see every token anyway (streaming `on_token`; stop strings, which are text); everything else a step needs
    (which rows finished, their lengths, the entropy sums) stays on the device."""
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
    slots = max(p.length for p in prefixes)  # cache width before decoding: the longest prompt
    pad_host = [slots - p.length for p in prefixes for _ in range(n)]  # the same numbers, on the host
    start = torch.tensor([p.length for p in prefixes], dtype=torch.long, device=device).repeat_interleave(n)
    delta = torch.cat([p.rope_delta.view(1) for p in prefixes]).to(device).repeat_interleave(n)
    rows = len(prefixes) * n
    tokens = torch.full((rows, steps), rules.pad_id, dtype=torch.long, device=device)
    scores = torch.zeros(rows, steps, device=device)
    lengths = torch.full((rows,), steps, dtype=torch.long, device=device)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    entropy_sum = torch.zeros((), dtype=torch.float64, device=device)
    entropy_tokens = torch.zeros((), dtype=torch.long, device=device)
    live = _Live.of(list(range(rows)), n, device, per_prompt=not (params.greedy or len(streams) == 1))
    cut = 0  # leading padding slots already removed from the cache
    # A caller that reads the device at every step anyway (streaming, stop strings) gets a look at every step: rows
    # leave as soon as they finish, and a stream never sees a token after its end.
    look_every = 1 if on_token is not None or params.stop else SYNC_EVERY
    for step in range(steps):
        was = finished[live.index]  # rows that finished since the last look stay in the batch until the next one
        # Entropy of the sampling distribution of the rows still decoding, for the metrics.
        tempered = torch.log_softmax(logits / (temperature if temperature > 0 else 1.0), dim=-1)
        entropy_sum -= ((tempered.exp() * tempered).sum(-1) * ~was).sum()
        entropy_tokens += (~was).sum()
        chosen, logp = _pick(logits, live.spans, streams, params,
                             banned_and_stop if step < params.min_new_tokens else banned)
        tokens[live.index, step] = torch.where(was, rules.pad_id, chosen)
        scores[live.index, step] = torch.where(was, 0.0, logp)
        if on_token is not None:  # streaming: the caller asked to see every token as it comes
            on_token(int(chosen[0]))
        done = torch.isin(chosen, stop_ids)
        if params.stop:  # stop strings are text: read on the host at every step
            done |= rules.hit_stop(tokens, live.index, step, params.stop)
        lengths[live.index] = torch.where(done & ~was, step + 1, lengths[live.index])
        finished[live.index] = was | done
        if step + 1 == steps:
            break
        if (step + 1) % look_every == 0:
            keep = (~finished[live.index]).tolist()  # the one host sync of these SYNC_EVERY steps
            if not any(keep):
                break
            if not all(keep):
                positions = [i for i, alive in enumerate(keep) if alive]
                kept = torch.tensor(positions, dtype=torch.long, device=device)
                cache.batch_select_indices(kept)
                chosen = chosen[kept]
                live = _Live.of([live.rows[i] for i in positions], n, device, live.spans is not None)
                unused = min(pad_host[r] for r in live.rows) - cut  # padding every live row has: nobody reads it
                if unused > 0:
                    drop_leading_slots(cache, unused)
                    cut += unused
        mask = None
        if any(pad_host[r] > cut for r in live.rows):
            width = slots - cut + step + 1  # cached slots + the token going in now
            mask = (torch.arange(width, device=device).view(1, -1) >= (pad[live.index] - cut).view(-1, 1)).long()
        hidden = continue_from(model, cache, chosen[:, None], start[live.index] + step, delta[live.index].view(-1, 1),
                               mask)
        logits = lm_head(hidden[:, -1]).float()
        counters["decode_steps"] += 1
    counters["entropy_sum"] = counters.get("entropy_sum", 0.0) + float(entropy_sum)
    counters["entropy_tokens"] = counters.get("entropy_tokens", 0) + int(entropy_tokens)
    ends, done_rows = lengths.tolist(), finished.tolist()
    return [Row(tokens[i, : ends[i]], scores[i, : ends[i]], done_rows[i]) for i in range(rows)]
