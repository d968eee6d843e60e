"""Chat messages for a Sample: image slots in order, optional system prompt, suffix and assistant response.

Text prompts may hold `<image>` placeholders (ShareGPT, EasyR1, VLM-R1); each becomes an image slot where it stands.
Without placeholders the images come first, then the text (the Qwen-VL convention).

>>> from mmrl.data.sample import Sample
>>> s = Sample(id="a", prompt="Compare <image> and <image>.", answer="x", images=["1.png", "2.png"])
>>> [p["type"] for p in build_messages(s)[0]["content"]]
['text', 'image', 'text', 'image', 'text']
"""

from __future__ import annotations

import copy
from typing import Any

from mmrl.data.sample import Sample
from mmrl.errors import DataError

IMAGE_PLACEHOLDER = "<image>"


def _text_to_parts(text: str, n_images: int, sample_id: str) -> list[dict[str, Any]]:
    pieces = text.split(IMAGE_PLACEHOLDER)
    slots = len(pieces) - 1
    if slots == 0:
        parts: list[dict[str, Any]] = [{"type": "image"} for _ in range(n_images)]
        return parts + ([{"type": "text", "text": text}] if text else [])
    if slots != n_images:
        raise DataError(f"sample {sample_id}: prompt has {slots} {IMAGE_PLACEHOLDER} placeholders but {n_images} "
                        "images; make them match")
    parts = []
    for index, piece in enumerate(pieces):
        piece = piece.strip("\n") if index else piece.rstrip("\n")
        if piece.strip():
            parts.append({"type": "text", "text": piece})
        if index < slots:
            parts.append({"type": "image"})
    return parts


def _count_slots(messages: list[dict[str, Any]]) -> int:
    return sum(1 for m in messages if isinstance(m["content"], list) for p in m["content"] if p.get("type") == "image")


def build_messages(sample: Sample, system_prompt: str | None = None, prompt_suffix: str | None = None,
                   with_response: bool = False) -> list[dict[str, Any]]:
    """The conversation for `sample` (see the module docstring); `with_response` appends `sample.response`."""
    n_images = len(sample.images)
    if isinstance(sample.prompt, str):
        messages = [{"role": "user", "content": _text_to_parts(sample.prompt, n_images, sample.id)}]
    else:
        messages = copy.deepcopy(sample.prompt)
        for message in messages:
            if message["role"] == "system" and isinstance(message["content"], str):
                # Parts, as a configured system prompt is: templates that iterate over content parts (SmolVLM's)
                # silently render a string as nothing.
                message["content"] = [{"type": "text", "text": message["content"]}]
            elif isinstance(message["content"], str):
                text = message["content"]
                message["content"] = _text_to_parts(text, text.count(IMAGE_PLACEHOLDER), sample.id)
        slots = _count_slots(messages)
        if slots == 0 and n_images:
            first_user = next(m for m in messages if m["role"] == "user")
            first_user["content"] = [{"type": "image"} for _ in range(n_images)] + list(first_user["content"])
        elif slots != n_images:
            raise DataError(f"sample {sample.id}: prompt has {slots} image slots but {n_images} images")
    if prompt_suffix:
        last_user = [m for m in messages if m["role"] == "user"][-1]
        last_user["content"] = list(last_user["content"]) + [{"type": "text", "text": prompt_suffix}]
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    if with_response:
        if sample.response is None:
            raise DataError(f"sample {sample.id}: no target response for SFT (field 'response')")
        messages.append({"role": "assistant", "content": [{"type": "text", "text": sample.response}]})
    return messages
