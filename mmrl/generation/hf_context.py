"""Helpers of the in-process HF backend: chat prompt -> Sample, eval mode, neutral generation config, the token
streamer hook of `model.generate`, the context-length check (the vision-call counter lives in
`mmrl.models.vision_tower`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from mmrl.data.sample import Sample
from mmrl.errors import UserError
from mmrl.generation.types import Prompt
from mmrl.models.prefix import unwrap


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Sample in eval mode (no dropout; checkpointed layers keep the KV cache), then restore the previous mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def neutral_generation_config(model: Any) -> Iterator[None]:
    """Let `generate` see transformers' defaults, not the checkpoint's generation_config: a repetition penalty, bad
    words or a default top_k there would change the sampling distribution that the log-probs assume. The sampling
    parameters passed explicitly are then exactly the requested ones."""
    from transformers import GenerationConfig

    saved = getattr(model, "generation_config", None)
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = saved


def prompt_to_sample(prompt: Prompt) -> Sample:
    """The Sample a chat `Prompt` stands for: image parts become slots filled from `images` in order."""
    messages: list[dict[str, Any]] = []
    images: list[Any] = []
    for index, message in enumerate(prompt.messages):
        if not isinstance(message, dict) or "role" not in message:
            raise ValueError(f"messages[{index}]: expected an object with 'role' and 'content'")
        content = message.get("content")
        if isinstance(content, list):
            parts: list[dict[str, Any]] = []
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "image":
                    images.append(part["image"])
                    parts.append({"type": "image"})
                elif kind == "text":
                    parts.append({"type": "text", "text": str(part.get("text", ""))})
                else:
                    raise ValueError(f"messages[{index}]: unsupported content part {kind!r} (use 'text' or 'image')")
            messages.append({"role": message["role"], "content": parts})
        else:
            messages.append({"role": message["role"], "content": "" if content is None else str(content)})
    return Sample(id="prompt", prompt=messages, answer=None, images=images)


class TokenStreamer:
    """`model.generate`'s streamer hook: skips the prompt, hands each new token to the callback."""

    def __init__(self, on_token: Callable[[int], None]) -> None:
        self.on_token = on_token
        self.seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        for token in value.view(-1).tolist():
            self.on_token(int(token))

    def end(self) -> None:
        pass


class ContextOverflow(UserError, ValueError):
    """A prompt plus `max_new_tokens` longer than the model's context (CLI: exit 2; `mmrl serve`: a 400)."""


def context_length(model: Any) -> int | None:
    """The model's context in tokens: its (text) config's `max_position_embeddings`; None when it states none."""
    config = getattr(unwrap(model), "config", None)
    if config is None:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(text, "max_position_embeddings", None) or getattr(config, "max_position_embeddings", None)
    return int(value) if value else None


def check_context(model: Any, encoded: dict[str, Any], max_new_tokens: int, where: str) -> None:
    """Refuse, as vLLM does, an encoded prompt (batch dim 1) whose length plus `max_new_tokens` does not fit the
    model's context.

    `model.generate` would decode past `max_position_embeddings` (positions the model never saw, garbage text);
    cutting `max_new_tokens` down would silently change what a run asked for. The error says how to fix it.
    """
    context = context_length(model)
    mask = encoded.get("attention_mask")  # left padding does not count
    prompt_tokens = int(mask.sum()) if mask is not None else int(encoded["input_ids"].shape[-1])
    if context is None or prompt_tokens + max_new_tokens <= context:
        return
    room = context - prompt_tokens
    fix = (f"lower max_new_tokens (rollout.max_completion_length / max_tokens) to at most {room}" if room > 0
           else "shorten the prompt (fewer or smaller images, less text)")
    raise ContextOverflow(f"{where}: prompt of {prompt_tokens} tokens + max_new_tokens={max_new_tokens} exceeds the "
                          f"model's context of {context} tokens (max_position_embeddings); {fix}")
