"""Evaluation's generation: k completions per item through the one generation layer (`mmrl.generation`).

Greedy (`greedy=True`) is the HF backend at temperature 0; sampling draws from one generator seeded with `seed`, so
sampled results repeat and the caller's RNG (e.g. a trainer that evaluates mid-run) is left untouched. The items of a
batch (`batch_size`) decode together in one batched decode loop; greedy output is the same as item by item.

>>> from mmrl.config import load_config
>>> from mmrl.models.loading import load_policy
>>> loaded = load_policy(load_config(None).model, for_training=False)  # doctest: +SKIP
>>> [c[0].text for c in generate_completions(loaded.model, loaded.processor, samples, load_config(None).data)]  # doctest: +SKIP
['<think>...</think><answer>3</answer>', ...]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from mmrl.data.sample import Sample
from mmrl.generation import Completion, SamplingParams
from mmrl.generation.backends import make_backend
from mmrl.models.placement import model_device


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
    """`k` completions per sample (greedy needs k == 1). `on_batch(n_items)` is called after each batch (progress)."""
    if greedy and k != 1:
        raise ValueError("greedy decoding gives one completion per item; use k=1 or greedy=False")
    backend = make_backend(model, processor, data_cfg=data_cfg)
    params = SamplingParams(n=k, temperature=0.0 if greedy else temperature, top_p=top_p, top_k=top_k,
                            max_new_tokens=max_new_tokens, seed=seed)
    generator = None if greedy else torch.Generator(device=model_device(model)).manual_seed(seed)
    results: list[list[Completion]] = []
    for start in range(0, len(samples), batch_size):
        batch = list(samples[start : start + batch_size])
        results.extend(backend.generate(batch, params, generator=generator))
        if on_batch is not None:
            on_batch(len(batch))
    return results
