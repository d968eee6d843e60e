"""Encoded chat prompts for backend and forward tests: a random image of a given size, or text only."""

from __future__ import annotations

import numpy as np
from PIL import Image


def image_prompt(processor, size: int, question: str, seed: int) -> dict:
    pixels = (np.random.RandomState(seed).rand(size, size, 3) * 255).astype("uint8")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return dict(processor(text=[text], images=[Image.fromarray(pixels)], return_tensors="pt"))


def text_prompt(processor, question: str) -> dict:
    messages = [{"role": "user", "content": [{"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return dict(processor(text=[text], return_tensors="pt"))
