"""Helpers of the in-process HF backend: chat prompt -> Sample, eval mode, neutral generation config, vision-call
counters, the token streamer hook of `model.generate`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from mmrl.data.sample import Sample
from mmrl.generation.types import Prompt
from mmrl.models.prefix import unwrap


def vision_module(model: Any) -> torch.nn.Module | None:
    """The model's vision encoder (Qwen-VL `visual`, LLaVA/Gemma `vision_tower`), or None."""
    inner = unwrap(model)
    for path in ("model.visual", "visual", "model.vision_tower", "vision_tower"):
        obj = inner
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, torch.nn.Module):
            return obj
    return None


@contextlib.contextmanager
def count_vision(module: torch.nn.Module | None, counters: dict[str, Any]) -> Iterator[None]:
    """Count, while the block runs, calls of the vision encoder and the images it encoded (rows of `grid_thw`)."""
    counters.setdefault("vision_encoder_calls", 0)
    counters.setdefault("images_encoded", 0)
    if module is None:
        yield
        return

    def hook(_module: Any, args: tuple, kwargs: dict, _out: Any) -> None:
        counters["vision_encoder_calls"] += 1
        grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        counters["images_encoded"] += int(grid.shape[0]) if isinstance(grid, torch.Tensor) else 1

    handle = module.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


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
