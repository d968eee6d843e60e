"""Helpers of the in-process HF backend: chat prompt -> Sample, eval mode, neutral generation config, the token
streamer hook of `model.generate` (the vision-call counter lives in `mmrl.models.vision_tower`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from mmrl.data.sample import Sample
from mmrl.generation.types import Prompt


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
