"""Per-token log-probabilities of completions, computing the prompt (and its image) once per group.

`completion_logprobs` is the training forward: the prompt runs once with a KV cache, the cache is broadcast to the G
completions (part of the autograd graph, so the prompt and the vision tower receive the gradient of all G branches),
and the G completions run against it; decoder layers stay checkpointed (see `mmrl.models.shared_cache`;
`mmrl.models.training_forward.GroupForward` is what a DDP/FSDP wrapper wraps). The LM head only sees completion positions, in chunks.
`naive_completion_logprobs` is the TRL-style forward (G full sequences, image repeated G times); tests compare the two,
and it serves models other than Qwen2-VL/Qwen2.5-VL.

>>> lp = completion_logprobs(model, prompt, completion_ids, completion_mask)  # doctest: +SKIP
>>> lp.shape  # doctest: +SKIP
torch.Size([8, 64])
"""

from __future__ import annotations

from typing import Any

import torch

# The head's functions live below both forwards (mmrl.models.lm_head); their names are re-exported here.
from mmrl.models.lm_head import (  # noqa: F401
    DEFAULT_CHUNK,
    entropy_tap,
    head_logprobs,
    recording_entropy,
    selective_log_softmax,
    token_entropy,
)
from mmrl.models.placement import compute_autocast, to_model_device
from mmrl.models.prefix import (
    SEQUENCE_KEYS,
    continue_from,
    note_naive_fallback,
    reset_rope_deltas,
    run_prefix,
    strip_padding,
    supports_prefix_sharing,
    unwrap,
)
from mmrl.models.shared_cache import BranchCache, PrefixRecorder, checkpoint_with_shared_cache


def _scatter_active(values: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    out = values.new_zeros(active.shape)
    return out.masked_scatter(active, values)


def completion_logprobs(
    model: Any,
    prompt: dict[str, Any],
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK,
) -> torch.Tensor:
    """Log-probs [G, T] (float32, 0 where `completion_mask` is 0) of G completions of ONE prompt, prefix computed once.

    prompt: processor output for one prompt (batch dim 1: input_ids, attention_mask, mm_token_type_ids, pixel_values,
    image_grid_thw). completion_ids / completion_mask: [G, T], right padded. Logits are divided by `temperature`
    (the sampling temperature, as TRL does). Falls back to `naive_completion_logprobs` for models it cannot branch.
    Multi-turn episode groups (`mmrl.models.episode_forward`) with images after the prompt run one full sequence each.
    """
    from mmrl.models.episode_forward import EPISODE_KEY, episode_logprobs, has_episode_images, without_episode_rows

    if EPISODE_KEY in prompt:
        if has_episode_images(prompt) or not supports_prefix_sharing(model):
            return episode_logprobs(model, prompt, completion_ids, completion_mask, temperature=temperature,
                                    chunk_size=chunk_size)
        prompt = without_episode_rows(prompt)  # text-only observations: the shared prefix serves them
    if not supports_prefix_sharing(model):
        note_naive_fallback(model)
        return naive_completion_logprobs(model, prompt, completion_ids, completion_mask,
                                         temperature=temperature, chunk_size=chunk_size)
    prompt, completion_ids, completion_mask = to_model_device((prompt, completion_ids, completion_mask), model)
    num, length = completion_ids.shape
    inner = unwrap(model)
    # Decoder layers stay checkpointed when checkpointing is on: the recorder/branch caches make a replay exact.
    with checkpoint_with_shared_cache(list(inner.model.language_model.layers)), compute_autocast(model):
        prefix = run_prefix(model, prompt, cache=PrefixRecorder(config=inner.model.language_model.config))
        # Scores of completion token t come from position t-1: the prompt's last token for t = 0.
        hidden = prefix.last_hidden.unsqueeze(1).expand(num, 1, -1)
        if length > 1:
            branch = BranchCache.of(prefix.cache)  # the prompt's keys, broadcast to the G completions
            rest = continue_from(model, branch, completion_ids[:, :-1], prefix.length, prefix.rope_delta)
            hidden = torch.cat([hidden, rest], dim=1)
        active = completion_mask.bool()
        # Inside the autocast: the [tokens, vocab] matmul runs in the compute dtype (outside it, fp32 master weights
        # made it an fp32 matmul over the vocabulary); the log-softmax upcasts each chunk's logits to fp32.
        scores = head_logprobs(inner.lm_head, hidden[active], completion_ids[active],
                               temperature=temperature, chunk_size=chunk_size)
    return _scatter_active(scores, active)


def repeat_prompt(prompt: dict[str, Any], num: int) -> dict[str, Any]:
    """The prompt repeated `num` times along the batch (images included: each copy is encoded again)."""
    out = {}
    for key, value in prompt.items():
        if isinstance(value, torch.Tensor):
            out[key] = value.repeat(num, *([1] * (value.ndim - 1)))
        else:
            out[key] = value
    return out


def naive_completion_logprobs(
    model: Any,
    prompt: dict[str, Any],
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK,
) -> torch.Tensor:
    """Same result as `completion_logprobs` the way TRL computes it: G full [prompt, completion] sequences, the image
    encoded G times. Works for any HF image-text-to-text model. Returns [G, T] float32, 0 where the mask is 0."""
    prompt, completion_ids, completion_mask = to_model_device((prompt, completion_ids, completion_mask), model)
    with compute_autocast(model):
        return _naive_logprobs(model, prompt, completion_ids, completion_mask, temperature, chunk_size)


def _naive_logprobs(model: Any, prompt: dict[str, Any], completion_ids: torch.Tensor, completion_mask: torch.Tensor,
                    temperature: float, chunk_size: int) -> torch.Tensor:
    num, length = completion_ids.shape
    prompt = strip_padding(prompt)
    batch = repeat_prompt(prompt, num)
    fill = {"input_ids": completion_ids, "attention_mask": completion_mask}
    for key in SEQUENCE_KEYS:
        if batch.get(key) is not None:
            tail = fill.get(key, torch.zeros_like(completion_ids))
            batch[key] = torch.cat([batch[key], tail.to(batch[key].dtype)], dim=1)
    inner = unwrap(model)
    core = getattr(inner, "model", None)
    reset_rope_deltas(model)
    out = inner.model(**batch) if core is not None and hasattr(inner, "lm_head") else None
    if out is not None:
        hidden = out.last_hidden_state[:, -length - 1 : -1]
        active = completion_mask.bool()
        scores = head_logprobs(inner.lm_head, hidden[active], completion_ids[active],
                               temperature=temperature, chunk_size=chunk_size)
        reset_rope_deltas(model)
        return _scatter_active(scores, active)
    logits = model(**batch, logits_to_keep=length + 1).logits[:, :-1]
    tap = entropy_tap()
    if tap is not None:  # the active tokens' entropies, in the order `recording_entropy` promises
        tap.append(token_entropy(logits[completion_mask.bool()] / temperature))
    scores = selective_log_softmax(logits / temperature, completion_ids, chunk_size=chunk_size)
    return torch.where(completion_mask.bool(), scores, torch.zeros_like(scores))
