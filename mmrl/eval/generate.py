"""Batched inference for evaluation and demos: left-padded prompts, `model.generate`, k samples per item.

Texts are decoded with `skip_special_tokens=False` and only end-of-turn/padding tokens are removed, so tags such as
`<answer>` survive whatever the tokenizer marks as special (skipping special tokens silently
zeroes every format reward when the tags are registered as special).

>>> from mmrl.config import load_config
>>> from mmrl.models.loading import load_policy
>>> loaded = load_policy(load_config(None).model, for_training=False)  # doctest: +SKIP
>>> generate_texts(loaded.model, loaded.processor, samples, load_config(None).data, max_new_tokens=16)  # doctest: +SKIP
[['<think>...</think><answer>3</answer>'], ...]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mmrl.data.sample import Sample
from mmrl.models.placement import compute_autocast, model_device, to_model_device
from mmrl.models.tokens import placeholder_token_ids

# Strings removed from decoded completions (end of turn and padding of Qwen-style tokenizers).
STRIP_STRINGS = ("<|im_end|>", "<|endoftext|>")


@dataclass
class Completion:
    text: str
    n_tokens: int  # generated tokens, the stop token included
    truncated: bool  # no stop token: it hit max_new_tokens (rows that stopped early are padded after the stop)


def _stop_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (configured, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value is not None:
            ids.update(int(v) for v in value)
    return ids


def decode_completion(ids: Sequence[int], tokenizer: Any, stop_ids: set[int], pad_id: int | None) -> Completion:
    """Cut at the first stop token, drop trailing padding, decode keeping every non-padding token."""
    ids = [int(i) for i in ids]
    cut = next((i for i, t in enumerate(ids) if t in stop_ids), None)
    kept = ids if cut is None else ids[:cut]
    n_tokens = len(kept) if cut is None else cut + 1
    if cut is None and pad_id is not None:
        while kept and kept[-1] == pad_id:
            kept.pop()
        n_tokens = len(kept)
    text = tokenizer.decode(kept, skip_special_tokens=False)
    for junk in STRIP_STRINGS:
        text = text.replace(junk, "")
    return Completion(text=text, n_tokens=n_tokens, truncated=cut is None)


@torch.no_grad()
def generate_completions(
    model: Any,
    processor: Any,
    samples: Sequence[Sample],
    data_cfg: Any,
    max_new_tokens: int = 128,
    greedy: bool = True,
    temperature: float = 1.0,
    k: int = 1,
    seed: int = 0,
    batch_size: int = 16,
    top_p: float = 1.0,
    top_k: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> list[list[Completion]]:
    """`k` completions per sample (greedy needs k == 1). `on_batch(n_items)` is called after each batch (progress).

    Runs under a forked RNG seeded with `seed`, so sampled results repeat and the caller's RNG (e.g. a trainer that
    evaluates mid-run) is left untouched.
    """
    from mmrl.data.collate import encode_prompts

    if greedy and k != 1:
        raise ValueError("greedy decoding gives one completion per item; use k=1 or greedy=False")
    tokenizer = processor.tokenizer
    stop_ids = _stop_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id
    device = model_device(model)
    was_training = model.training
    model.eval()
    options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "num_return_sequences": k, "pad_token_id": pad_id,
                               "eos_token_id": sorted(stop_ids), "do_sample": not greedy}
    banned = placeholder_token_ids(model, tokenizer)
    if banned:  # image/video placeholders are never an answer, and break the model if fed back
        options["suppress_tokens"] = banned
    if not greedy:
        options.update(temperature=temperature, top_p=top_p, top_k=top_k)
    results: list[list[Completion]] = []
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), compute_autocast(model):
            torch.manual_seed(seed)
            for start in range(0, len(samples), batch_size):
                batch = list(samples[start : start + batch_size])
                encoded = encode_prompts(processor, batch, data_cfg)
                inputs = to_model_device(encoded, model)
                output = model.generate(**inputs, **options)
                new_tokens = output[:, inputs["input_ids"].shape[1] :].tolist()
                for i in range(len(batch)):
                    rows = new_tokens[i * k : (i + 1) * k]  # generate repeats each prompt k times in a row
                    results.append([decode_completion(row, tokenizer, stop_ids, pad_id) for row in rows])
                if on_batch is not None:
                    on_batch(len(batch))
    finally:
        model.train(was_training)
    return results


def generate_texts(
    model: Any,
    processor: Any,
    samples: Sequence[Sample],
    data_cfg: Any,
    max_new_tokens: int = 128,
    greedy: bool = True,
    temperature: float = 1.0,
    k: int = 1,
    seed: int = 0,
    batch_size: int = 16,
) -> list[list[str]]:
    """The texts of `generate_completions`: `k` strings per sample (demos and quick checks)."""
    completions = generate_completions(model, processor, samples, data_cfg, max_new_tokens=max_new_tokens,
                                       greedy=greedy, temperature=temperature, k=k, seed=seed, batch_size=batch_size)
    return [[c.text for c in item] for item in completions]
