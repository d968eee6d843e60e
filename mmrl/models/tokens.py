"""Token ids a policy must never generate: the image/video placeholders and the markers around them.

A completion holding an image or video pad token breaks the next training forward (the model finds more placeholder
tokens than image features and raises; a peer's Qwen3-VL run crashed at step 44 that way), and no answer needs one.
Every sampler here (rollouts, greedy eval) gives them probability 0.
"""

from __future__ import annotations

from typing import Any

# Config attributes naming multimodal placeholder/marker tokens across architectures (Qwen2/2.5/3-VL, Gemma3,
# Idefics3/SmolVLM, LLaVA-style models).
PLACEHOLDER_ATTRS = (
    "image_token_id", "video_token_id", "image_token_index", "video_token_index",
    "vision_start_token_id", "vision_end_token_id", "boi_token_index", "eoi_token_index",
    "audio_token_id", "audio_token_index",
)
# The same tokens by name, for tokenizers whose model config does not list them.
PLACEHOLDER_TOKENS = (
    "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<image_soft_token>", "<start_of_image>", "<end_of_image>", "<image>", "<fake_token_around_image>",
    "<global-img>",
)


def placeholder_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Ids of image/video placeholder tokens the model's config or tokenizer defines, inside the output vocabulary.

    >>> class Config: image_token_id = 5; video_token_id = 6
    >>> class Model: config = Config()
    >>> class Tok:
    ...     def convert_tokens_to_ids(self, token): return None
    >>> placeholder_token_ids(Model(), Tok())
    [5, 6]
    """
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(inner, "config", None)
    ids: set[int] = set()
    for attr in PLACEHOLDER_ATTRS:
        value = getattr(config, attr, None)
        if isinstance(value, int) and value >= 0:
            ids.add(value)
    unk = getattr(tokenizer, "unk_token_id", None)
    for token in PLACEHOLDER_TOKENS:
        value = tokenizer.convert_tokens_to_ids(token)
        if isinstance(value, int) and value >= 0 and value != unk:
            ids.add(value)
    vocab = _vocab_size(inner)
    return sorted(i for i in ids if vocab is None or i < vocab)


def _vocab_size(model: Any) -> int | None:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    return int(weight.shape[0]) if weight is not None else None
