"""Pick the next token from logits: temperature, top-k, top-p (nucleus), forbidden tokens, greedy at temperature 0."""

from __future__ import annotations

import torch


def filter_logits(logits: torch.Tensor, *, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k / the smallest set with cumulative probability >= top_p to -inf. [B, V] -> [B, V]."""
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the tokens ranked above it already reach top_p (the top token always stays).
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    forbid: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row of `logits` [B, V]; returns (tokens [B], their log-prob [B] under logits/temperature).

    The log-prob is that of the unfiltered tempered distribution (what the training forward recomputes with the same
    temperature). `forbid` token ids get probability 0 (min_new_tokens forbids EOS). temperature 0 = greedy.
    """
    scaled = logits / temperature if temperature > 0 else logits
    logp_all = torch.log_softmax(scaled.float(), dim=-1)
    work = scaled
    if forbid is not None and forbid.numel():
        work = work.index_fill(-1, forbid.to(work.device), float("-inf"))
    if temperature > 0:
        work = filter_logits(work, top_k=top_k, top_p=top_p)
        probs = work.float().softmax(-1)
        tokens = torch.multinomial(probs, 1, generator=generator).view(-1)
    else:
        tokens = work.argmax(-1)
    return tokens, logp_all.gather(-1, tokens[:, None]).view(-1)
