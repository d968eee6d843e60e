"""Turn Samples into model inputs: chat template + processor, left padding for generation, SFT labels.

Images are prepared by `mmrl.data.vision.prepare_sample_images` (the same resize everywhere) and handed to the
processor with `do_resize=False`, so the model input size is exactly `sample.input_size` (processors on another
patch grid or with a fixed input size resize once more, and `sample.input_size` is updated to what they produced).
A prompt longer than `data.max_prompt_length` is rejected by id, never truncated: truncation through image tokens is
what produces the classic "image features and image tokens do not match".
"""

from __future__ import annotations

from typing import Any

import torch

from mmrl.data.sample import Sample
from mmrl.data.templates import build_messages
from mmrl.data.vision import prepare_sample_images
from mmrl.errors import DataError

IGNORE_INDEX = -100
SEQUENCE_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")
TYPE_KEYS = ("mm_token_type_ids", "token_type_ids")  # which of them a processor returns depends on the architecture


def _tokenizer(processor):
    return getattr(processor, "tokenizer", processor)


def _chat_text(processor, messages: list[dict[str, Any]], add_generation_prompt: bool,
               template_kwargs: dict[str, Any] | None = None) -> str:
    """The chat template's text; `template_kwargs` are `data.chat_template_kwargs` (e.g. Qwen3's enable_thinking)."""
    return processor.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False,
                                         **(template_kwargs or {}))


def _process(processor, text: str, images: list) -> dict[str, torch.Tensor]:
    kwargs: dict[str, Any] = {"text": [text], "return_tensors": "pt"}
    if images:
        kwargs["images"] = images
        # Already resized by resize_for_model (28-pixel grid): one resize rule everywhere. Processors on another grid
        # (Qwen3-VL: 32) or with a fixed input size (Gemma3) resize once more to what their vision tower takes.
        kwargs["do_resize"] = not _takes_28_grid(processor)
    encoded = dict(processor(**kwargs))
    # M-RoPE models need the token types even for a prompt without images; a model whose forward takes none
    # (Idefics3/SmolVLM) must not get them: `generate` refuses unknown inputs.
    if not any(key in encoded for key in TYPE_KEYS) and "mm_token_type_ids" in _input_names(processor):
        encoded["mm_token_type_ids"] = torch.zeros_like(encoded["input_ids"])
    return encoded


def _input_names(processor) -> list[str]:
    return list(getattr(processor, "model_input_names", None) or ["mm_token_type_ids"])


def _record_input_size(sample: Sample, processor, encoded: dict[str, torch.Tensor]) -> None:
    """After a processor's own resize, `sample.input_size` is what its vision tower saw (box rewards use that frame)."""
    grid = encoded.get("image_grid_thw")
    patch = getattr(getattr(processor, "image_processor", None), "patch_size", None)
    if grid is not None and isinstance(patch, int):
        sample.input_size = (int(grid[0, 2]) * patch, int(grid[0, 1]) * patch)
    elif encoded.get("pixel_values") is not None and encoded["pixel_values"].ndim == 4:  # fixed-size input (Gemma3)
        sample.input_size = (int(encoded["pixel_values"].shape[3]), int(encoded["pixel_values"].shape[2]))


def _takes_28_grid(processor) -> bool:
    image_processor = getattr(processor, "image_processor", None)
    patch, merge = getattr(image_processor, "patch_size", None), getattr(image_processor, "merge_size", None)
    return isinstance(patch, int) and isinstance(merge, int) and patch * merge == 28


def encode_one(processor, sample: Sample, data_cfg: Any, with_response: bool = False) -> dict[str, torch.Tensor]:
    """Encode one sample (batch dim 1): input_ids, attention_mask, mm_token_type_ids (+ pixel_values,
    image_grid_thw when it has images). With `with_response`, also `labels` (-100 except the response and its
    closing end-of-turn token). Raises `DataError` naming the sample when the prompt is too long.
    """
    system = getattr(data_cfg, "system_prompt", None)
    suffix = getattr(data_cfg, "prompt_suffix", None)
    template_kwargs = getattr(data_cfg, "chat_template_kwargs", None)
    images = prepare_sample_images(sample, data_cfg)
    prompt_messages = build_messages(sample, system, suffix, with_response=False)
    prompt_text = _chat_text(processor, prompt_messages, add_generation_prompt=True, template_kwargs=template_kwargs)
    encoded = _process(processor, prompt_text, images)
    if images and not _takes_28_grid(processor):
        _record_input_size(sample, processor, encoded)
    prompt_len = encoded["input_ids"].shape[1]
    max_prompt = getattr(data_cfg, "max_prompt_length", None)
    if max_prompt is not None and prompt_len > max_prompt:
        raise DataError(f"sample {sample.id}: prompt is {prompt_len} tokens (images included), above "
                        f"data.max_prompt_length={max_prompt}; raise it, lower data.max_pixels, or drop the sample")
    if not with_response:
        return encoded
    full_messages = build_messages(sample, system, suffix, with_response=True)
    full_text = _chat_text(processor, full_messages, add_generation_prompt=False, template_kwargs=template_kwargs)
    tail_text = full_text[len(prompt_text):] if full_text.startswith(prompt_text) else \
        _tail_after_opened_turn(processor, sample, full_messages, prompt_text, template_kwargs)
    tokenizer = _tokenizer(processor)
    tail_ids = tokenizer(tail_text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    # Learn the response up to and including its end-of-turn token; whatever the template adds after it is context.
    end_id = end_of_turn_id(processor)
    tail = tail_ids[0].tolist()
    stop = max((i for i, t in enumerate(tail) if t == end_id), default=len(tail) - 1) + 1
    labels = torch.full((1, prompt_len + len(tail)), IGNORE_INDEX, dtype=torch.long)
    labels[0, prompt_len: prompt_len + stop] = tail_ids[0, :stop]
    encoded["input_ids"] = torch.cat([encoded["input_ids"], tail_ids], dim=1)
    encoded["attention_mask"] = torch.cat([encoded["attention_mask"], torch.ones_like(tail_ids)], dim=1)
    for key in TYPE_KEYS:
        if key in encoded:
            encoded[key] = torch.cat([encoded[key], torch.zeros_like(tail_ids)], dim=1)
    encoded["labels"] = labels
    return encoded


def _tail_after_opened_turn(processor, sample: Sample, full_messages: list[dict[str, Any]], prompt_text: str,
                            template_kwargs: dict[str, Any] | None = None) -> str:
    """The response's tokens after a generation prompt that already wrote part of the turn (`<think>\\n`), for
    templates that cannot render the response after that prompt (QwQ-style templates drop the reasoning of every
    assistant turn): the response's own text without the part the prompt wrote (`sft_continuation`), then whatever the
    template writes after an assistant message (its end-of-turn). Training then holds exactly the tokens the model
    writes at inference, the opened tag once."""
    from mmrl.models.interface import sft_continuation, turn_prefix_of

    system = full_messages[0] if full_messages and full_messages[0].get("role") == "system" else None
    content = system["content"] if system else None
    text = content if isinstance(content, str) else (content[0].get("text") if content else None)
    prefix, _think = turn_prefix_of(processor, template_kwargs, text)
    if not prefix or not prompt_text.endswith(prefix):
        raise DataError(f"sample {sample.id}: the chat template renders the prompt differently with a response; "
                        "cannot locate the assistant tokens")
    marker = "\x00mmrl-response\x00"  # no tag in it: every template renders it as it is
    probe = full_messages[:-1] + [{"role": "assistant", "content": [{"type": "text", "text": marker}]}]
    rendered = _chat_text(processor, probe, add_generation_prompt=False, template_kwargs=template_kwargs)
    after = rendered[rendered.index(marker) + len(marker):] if marker in rendered else ""
    return sft_continuation(str(sample.response), prefix, sample.id) + after


def end_of_turn_id(processor) -> int | None:
    """The token the chat template closes an assistant turn with (`<|im_end|>`, Gemma's `<end_of_turn>`, SmolVLM's
    `<end_of_utterance>`), read from the template itself: the first token it renders after an assistant message.

    Guessing it from names (`<|im_end|>`, else the tokenizer's EOS) picked a token the template never writes for
    SmolVLM (its vocabulary has `<|im_end|>`) and Gemma (EOS `<eos>`, turns end `<end_of_turn>`): the label then ran
    to the end of the rendered text, teaching the model the newline that follows the turn.
    """
    tokenizer = _tokenizer(processor)
    cached = getattr(tokenizer, "_mmrl_end_of_turn", False)
    if cached is not False:
        return cached
    marker = "mmrl end of turn probe"
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                {"role": "assistant", "content": [{"type": "text", "text": marker}]}]
    try:
        text = processor.apply_chat_template(messages, tokenize=False)
    except Exception:  # noqa: BLE001 - a template that cannot render the probe: fall back to the tokenizer's EOS
        text = ""
    # Whitespace the template writes before the token (`{{ content }}\n<end>`, Llama-2's `' ' + eos_token`) is not
    # the end: read as one, every rollout stopped at its first newline or space.
    after = text[text.rfind(marker) + len(marker):].lstrip() if marker in text else ""
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    value = ids[0] if ids else tokenizer.eos_token_id
    tokenizer._mmrl_end_of_turn = value
    return value


def _pad_id(processor) -> int:
    tokenizer = _tokenizer(processor)
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def pad_batch(items: list[dict[str, torch.Tensor]], pad_id: int, side: str = "left") -> dict[str, torch.Tensor]:
    """Stack per-sample encodings: pad sequences on `side`, concatenate pixel_values and image_grid_thw."""
    length = max(item["input_ids"].shape[1] for item in items)
    fills = {"input_ids": pad_id, "attention_mask": 0, "mm_token_type_ids": 0, "token_type_ids": 0,
             "labels": IGNORE_INDEX}
    batch: dict[str, torch.Tensor] = {}
    for key, fill in fills.items():
        if key not in items[0]:
            continue
        rows = []
        for item in items:
            row = item[key][0]
            pad = torch.full((length - row.shape[0],), fill, dtype=row.dtype)
            rows.append(torch.cat([pad, row]) if side == "left" else torch.cat([row, pad]))
        batch[key] = torch.stack(rows)
    with_images = [item for item in items if "pixel_values" in item]
    for key in ("pixel_values", "image_grid_thw", "pixel_attention_mask"):  # per-image tensors (Gemma3: no grid)
        if with_images and key in with_images[0]:
            batch[key] = torch.cat(_pad_tiles([item[key] for item in with_images]), dim=0)
    return batch


def _pad_tiles(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Idefics3/SmolVLM splits each image into a number of tiles that depends on its size ([1, tiles, ...] per
    sample): pad with all-zero tiles, which its model drops (and a zero `pixel_attention_mask`)."""
    if len(tensors) < 2 or tensors[0].ndim < 4 or all(t.shape[1:] == tensors[0].shape[1:] for t in tensors):
        return tensors
    if any(t.ndim != tensors[0].ndim or t.shape[2:] != tensors[0].shape[2:] for t in tensors):
        raise DataError("images of this batch were encoded to different sizes; cannot batch them")
    most = max(t.shape[1] for t in tensors)
    return [torch.cat([t, t.new_zeros((t.shape[0], most - t.shape[1], *t.shape[2:]))], dim=1) for t in tensors]


def encode_prompts(processor, samples: list[Sample], data_cfg: Any) -> dict[str, torch.Tensor]:
    """Left-padded generation batch: input_ids, attention_mask, mm_token_type_ids, pixel_values, image_grid_thw."""
    return pad_batch([encode_one(processor, s, data_cfg) for s in samples], _pad_id(processor), side="left")


def encode_sft(processor, samples: list[Sample], data_cfg: Any, max_length: int | None = None) -> dict:
    """Right-padded SFT batch with `labels` (-100 outside assistant responses). Over-long samples are rejected."""
    items = [encode_one(processor, s, data_cfg, with_response=True) for s in samples]
    if max_length is not None:
        for sample, item in zip(samples, items):
            if item["input_ids"].shape[1] > max_length:
                raise DataError(f"sample {sample.id}: {item['input_ids'].shape[1]} tokens with its response, above "
                                f"max_length={max_length}; raise it or shorten the response")
    return pad_batch(items, _pad_id(processor), side="right")
