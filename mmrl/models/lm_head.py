"""The LM head's part of every training forward: log p(targets) from hidden states, chunked, with the fp32
log-softmax and the per-token entropies the RL update's entropy controls read (`recording_entropy`). Below both
forwards (the shared-prefix one in `mmrl.models.logprobs` and the episode one in `mmrl.models.episode_forward`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch.utils.checkpoint import checkpoint

DEFAULT_CHUNK = 1024  # rows of hidden states per LM-head call: bounds the [rows, vocab] logits buffer


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor, chunk_size: int = DEFAULT_CHUNK) -> torch.Tensor:
    """log_softmax(logits)[..., index] without materialising the full log-softmax: [..., V], [...] -> [...].

    Rows are processed `chunk_size` at a time; the normaliser is computed in float32 (bf16 logsumexp loses digits).

    >>> logits = torch.tensor([[0.0, 1.0, 2.0]]); float(selective_log_softmax(logits, torch.tensor([2])))
    -0.40760600566864014
    """
    flat = logits.reshape(-1, logits.shape[-1])
    idx = index.reshape(-1)
    parts = []
    for start in range(0, flat.shape[0], chunk_size):
        rows = flat[start : start + chunk_size].float()
        picked = rows.gather(-1, idx[start : start + chunk_size, None]).squeeze(-1)
        parts.append(picked - torch.logsumexp(rows, dim=-1))
    out = torch.cat(parts) if parts else flat.new_zeros(0, dtype=torch.float32)
    return out.view(index.shape)


def _head_logprobs(lm_head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    return selective_log_softmax(lm_head(hidden).float() / temperature, targets, chunk_size=hidden.shape[0] or 1)


# The RL update's entropy controls need each completion token's entropy from the same forward as its log-prob; a
# list set here (`recording_entropy`) receives it, so no signature between the update and the LM head changes.
_ENTROPY_TAP: ContextVar[list[torch.Tensor] | None] = ContextVar("entropy_tap", default=None)


@contextmanager
def recording_entropy(out: list[torch.Tensor]) -> Iterator[None]:
    """Within the block, every `head_logprobs` call also appends the entropy of the tempered next-token distribution
    at its rows to `out` ([N] float32, with gradient, in the order of the log-probs it returns)."""
    token = _ENTROPY_TAP.set(out)
    try:
        yield
    finally:
        _ENTROPY_TAP.reset(token)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) per row, in float32: [..., V] -> [...]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def _head_logprobs_entropy(lm_head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                           temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    logits = lm_head(hidden).float() / temperature
    return selective_log_softmax(logits, targets, chunk_size=hidden.shape[0] or 1), token_entropy(logits)


def _head_with_entropy(lm_head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, temperature: float,
                       chunk_size: int, tap: list[torch.Tensor]) -> torch.Tensor:
    """`head_logprobs` that also appends the rows' entropies to `tap` (each chunk checkpointed as there)."""
    recompute = torch.is_grad_enabled() and hidden.requires_grad and hidden.shape[0] > chunk_size
    logps, entropies = [], []
    for start in range(0, max(hidden.shape[0], 1), chunk_size):
        h, t = hidden[start : start + chunk_size], targets[start : start + chunk_size]
        if recompute:
            lp, ent = checkpoint(_head_logprobs_entropy, lm_head, h, t, temperature, use_reentrant=False)
        else:
            lp, ent = _head_logprobs_entropy(lm_head, h, t, temperature)
        logps.append(lp)
        entropies.append(ent)
    tap.append(torch.cat(entropies))
    return torch.cat(logps)


def head_logprobs(
    lm_head: torch.nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK,
) -> torch.Tensor:
    """log p(targets) from hidden states [N, H] through `lm_head`, chunked: [N, H], [N] -> [N] float32.

    Call it under the model's `compute_autocast`: the head's matmul then runs in the compute dtype (bf16 logits, as the
    rollout samples from) and only each chunk's logits are upcast for the fp32 log-softmax; the head's weight is never
    copied to fp32.
    With gradients on and more than one chunk, each chunk is checkpointed so its [chunk, vocab] logits are freed
    after the forward and recomputed in backward; peak memory is then one chunk's logits, not N x vocab.
    """
    tap = _ENTROPY_TAP.get()
    if tap is not None:
        return _head_with_entropy(lm_head, hidden, targets, temperature, chunk_size, tap)
    if hidden.shape[0] <= chunk_size:
        return _head_logprobs(lm_head, hidden, targets, temperature)
    recompute = torch.is_grad_enabled() and hidden.requires_grad
    parts = []
    for start in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[start : start + chunk_size], targets[start : start + chunk_size]
        if recompute:
            parts.append(checkpoint(_head_logprobs, lm_head, h, t, temperature, use_reentrant=False))
        else:
            parts.append(_head_logprobs(lm_head, h, t, temperature))
    return torch.cat(parts)


def entropy_tap() -> list[torch.Tensor] | None:
    """The list `recording_entropy` set for this context (None outside one): forwards that compute their logits
    themselves append their active tokens' entropies to it."""
    return _ENTROPY_TAP.get()
