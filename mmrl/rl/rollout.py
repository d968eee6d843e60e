"""Rollout backends: sample G completions for each prompt. One method, so vLLM (or anything else) can slot in.

`HFSharedPrefixBackend` (Qwen2-VL / Qwen2.5-VL / Qwen3-VL) prefills each prompt once — its image is vision-encoded
once and its tokens go through the LM once — repeats the KV cache G times and decodes the G branches in one batch,
dropping branches from the cache as they hit EOS. `HFNaiveBackend` repeats the prompt G times and calls `model.generate`
(what TRL does); it is the comparison baseline and the fallback for other architectures.

>>> backend = make_backend(model, processor)  # doctest: +SKIP
>>> batch = backend.generate([prompt], group_size=4, max_new_tokens=32)  # doctest: +SKIP
>>> batch.completion_ids.shape, batch.texts[0]  # doctest: +SKIP
(torch.Size([4, 32]), '<think> ... </think><answer> red </answer>')
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from mmrl.errors import UserError
from mmrl.models.placement import compute_autocast, model_device, to_model_device
from mmrl.models.tokens import placeholder_token_ids
from mmrl.rl.logprobs import repeat_prompt
from mmrl.rl.prefix import (
    continue_from,
    note_naive_fallback,
    run_prefix,
    strip_padding,
    supports_prefix_sharing,
    unwrap,
)
from mmrl.rl.sampling import sample_next

# Tokens removed from decoded texts (reasoning tags like <think> must survive: rewards read them).
STRIP_TOKENS = ("<|im_end|>", "<|endoftext|>")


@dataclass
class RolloutBatch:
    """P prompts x G samples in prompt-major order (row i belongs to prompt i // G).

    completion_ids [P*G, T] right padded with the pad id; completion_mask [P*G, T] is 1 up to and including EOS;
    truncated [P*G] bool: no EOS within max_new_tokens; texts: decoded completions (special tags kept, EOS/pad
    stripped); logprobs [P*G, T] float32: log-probs of the sampled tokens under the sampling policy (logits /
    temperature, before top-k/top-p filtering), or None when the backend does not provide them. Tensors live on the
    model's device (the generator passed to `generate` must too). Image/video placeholder tokens are never sampled.
    """

    prompt_index: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    truncated: torch.Tensor
    texts: list[str]
    group_size: int
    logprobs: torch.Tensor | None = None
    counters: dict[str, int] = field(default_factory=dict)

    @property
    def group_ids(self) -> torch.Tensor:
        return self.prompt_index


class RolloutBackend(Protocol):
    def generate(
        self,
        prompts: list[dict[str, Any]],
        group_size: int,
        *,
        max_new_tokens: int,
        min_new_tokens: int = 0,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        generator: torch.Generator | None = None,
    ) -> RolloutBatch:
        """Sample `group_size` completions per prompt (temperature 0 = greedy)."""
        ...


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """EOS ids from the generation config and the tokenizer, restricted to the vocabulary."""
    inner = unwrap(model)
    ids: set[int] = set()
    gen = getattr(inner, "generation_config", None)
    value = getattr(gen, "eos_token_id", None) if gen is not None else None
    ids.update([value] if isinstance(value, int) else list(value or []))
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    vocab = inner.get_output_embeddings().weight.shape[0]
    return sorted(i for i in ids if 0 <= i < vocab)


def vision_module(model: Any) -> torch.nn.Module | None:
    inner = unwrap(model)
    for path in ("model.visual", "visual", "model.vision_tower", "vision_tower"):
        obj = inner
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, torch.nn.Module):
            return obj
    return None


@contextlib.contextmanager
def count_vision(module: torch.nn.Module | None, counters: dict[str, int]) -> Iterator[None]:
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
    parameters passed explicitly are then exactly the configured ones."""
    from transformers import GenerationConfig

    saved = getattr(model, "generation_config", None)
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = saved


class _HFBackend:
    def __init__(self, model: Any, processor: Any) -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.eos_ids = eos_token_ids(model, self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_ids[0]
        strip = {self.pad_id, *self.eos_ids}
        strip.update(i for t in STRIP_TOKENS if (i := self.tokenizer.convert_tokens_to_ids(t)) is not None and i >= 0)
        self.strip_ids = strip
        # Never sampled: image/video placeholders (a completion holding one breaks the training forward).
        self.banned_ids = placeholder_token_ids(model, self.tokenizer)

    def _finish(self, rows: list[torch.Tensor], logprobs: list[torch.Tensor] | None, group_size: int,
                counters: dict[str, int], device: torch.device | None = None) -> RolloutBatch:
        """Pad rows to one length, cut at the first EOS, and decode. Tensors come back on the model's device."""
        device = device if device is not None else model_device(self.model)
        eos = torch.tensor(self.eos_ids, dtype=torch.long, device=device)
        rows = [row.to(device) for row in rows]
        ends, cut = [], []
        for row in rows:
            hits = torch.isin(row, eos).nonzero()
            ends.append(int(hits[0]) + 1 if len(hits) else len(row))
            cut.append(len(hits) == 0)
        width = max(ends, default=0)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long, device=device)
        mask = torch.zeros(len(rows), width, dtype=torch.long, device=device)
        lps = torch.zeros(len(rows), width, dtype=torch.float32, device=device) if logprobs is not None else None
        texts = []
        for i, (row, end) in enumerate(zip(rows, ends, strict=True)):
            ids[i, :end] = row[:end]
            mask[i, :end] = 1
            if lps is not None:
                lps[i, :end] = logprobs[i][:end]
            keep = [t for t in row[:end].tolist() if t not in self.strip_ids]
            texts.append(self.tokenizer.decode(keep, skip_special_tokens=False))
        truncated = torch.tensor(cut, dtype=torch.bool, device=device)
        counters["generated_tokens"] = int(mask.sum())
        prompt_index = torch.arange(len(rows), device=device) // group_size
        return RolloutBatch(prompt_index, ids, mask, truncated, texts, group_size, lps, counters)


class HFSharedPrefixBackend(_HFBackend):
    """Prefill each prompt once, share its KV cache across the G samples, decode them as one batch."""

    @torch.no_grad()
    def generate(
        self,
        prompts: list[dict[str, Any]],
        group_size: int,
        *,
        max_new_tokens: int,
        min_new_tokens: int = 0,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        generator: torch.Generator | None = None,
    ) -> RolloutBatch:
        counters = {"prefill_tokens": 0, "decode_steps": 0}
        rows: list[torch.Tensor] = []
        logprobs: list[torch.Tensor] = []
        lm_head = unwrap(self.model).lm_head
        device = model_device(self.model)
        eos = torch.tensor(self.eos_ids, dtype=torch.long, device=device)
        banned = torch.tensor(self.banned_ids, dtype=torch.long, device=device)
        banned_and_eos = torch.cat([banned, eos])
        with eval_mode(self.model), count_vision(vision_module(self.model), counters), compute_autocast(self.model):
            for prompt in prompts:
                prompt = to_model_device(strip_padding(prompt), self.model)
                prefix = run_prefix(self.model, prompt)
                counters["prefill_tokens"] += prefix.length
                logits = lm_head(prefix.last_hidden).float().expand(group_size, -1)
                prefix.cache.batch_repeat_interleave(group_size)
                tokens = torch.full((group_size, max_new_tokens), self.pad_id, dtype=torch.long, device=device)
                scores = torch.zeros(group_size, max_new_tokens, device=device)
                alive = torch.arange(group_size, device=device)  # branches still decoding; the cache holds only them
                for step in range(max_new_tokens):
                    # Entropy of the sampling distribution, for the metrics (one extra softmax per decode step).
                    tempered = torch.log_softmax(logits / (temperature if temperature > 0 else 1.0), dim=-1)
                    counters["entropy_sum"] = counters.get("entropy_sum", 0.0) - float((tempered.exp() * tempered).sum())
                    counters["entropy_tokens"] = counters.get("entropy_tokens", 0) + tempered.shape[0]
                    chosen, logp = sample_next(
                        logits, temperature=temperature, top_p=top_p, top_k=top_k,
                        forbid=banned_and_eos if step < min_new_tokens else banned, generator=generator,
                    )
                    tokens[alive, step] = chosen
                    scores[alive, step] = logp
                    still = ~torch.isin(chosen, eos)
                    if step + 1 == max_new_tokens or not bool(still.any()):
                        break
                    if not bool(still.all()):
                        prefix.cache.batch_select_indices(still.nonzero().view(-1))
                        alive, chosen = alive[still], chosen[still]
                    hidden = continue_from(self.model, prefix.cache, chosen[:, None], prefix.length + step,
                                           prefix.rope_delta)
                    logits = lm_head(hidden[:, -1]).float()
                    counters["decode_steps"] += 1
                rows.extend(tokens)
                logprobs.extend(scores)
        return self._finish(rows, logprobs, group_size, counters, device)


class HFNaiveBackend(_HFBackend):
    """`model.generate` on the prompt repeated G times (image encoded G times): baseline and generic fallback."""

    @torch.no_grad()
    def generate(
        self,
        prompts: list[dict[str, Any]],
        group_size: int,
        *,
        max_new_tokens: int,
        min_new_tokens: int = 0,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        generator: torch.Generator | None = None,
    ) -> RolloutBatch:
        counters = {"prefill_tokens": 0}
        rows: list[torch.Tensor] = []
        inner = unwrap(self.model)
        device = model_device(self.model)
        sampling: dict[str, Any] = (
            {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": top_k}
            if temperature > 0
            else {"do_sample": False}
        )
        if self.banned_ids:
            sampling["suppress_tokens"] = self.banned_ids
        # generate() has no generator argument: a forked global RNG (CPU and the model's CUDA device) is seeded from it.
        rng_devices = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else []
        with eval_mode(self.model), count_vision(vision_module(self.model), counters), compute_autocast(self.model):
            for prompt in prompts:
                batch = repeat_prompt(to_model_device(strip_padding(prompt), self.model), group_size)
                length = batch["input_ids"].shape[1]
                counters["prefill_tokens"] += length * group_size
                core = getattr(inner, "model", None)
                if hasattr(core, "rope_deltas"):
                    core.rope_deltas = None
                rng = contextlib.nullcontext()
                if generator is not None:  # generate() has no generator argument: seed a forked global RNG from it
                    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
                    rng = torch.random.fork_rng(devices=rng_devices)
                with rng, neutral_generation_config(inner):
                    if generator is not None:
                        torch.manual_seed(seed)
                    out = self.model.generate(
                        **batch, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                        eos_token_id=self.eos_ids, pad_token_id=self.pad_id, **sampling,
                    )
                if hasattr(core, "rope_deltas"):
                    core.rope_deltas = None
                rows.extend(out[:, length:])
        return self._finish(rows, None, group_size, counters, device)


def backend_device(backend: Any) -> torch.device:
    """Where a backend's outputs live: its model's device (CPU for backends without a local model)."""
    model = getattr(backend, "model", None)
    return model_device(model) if model is not None else torch.device("cpu")


BACKENDS = ("hf",)


def make_backend(model: Any, processor: Any, name: str = "hf", share_prompt: bool = True) -> RolloutBackend:
    """`hf`: the shared-prefix backend for Qwen2-VL/2.5-VL/3-VL (unless `share_prompt` is False), naive otherwise."""
    if name not in BACKENDS:
        raise UserError(f"rollout.backend: unknown backend '{name}'; valid: {', '.join(BACKENDS)}")
    if share_prompt and supports_prefix_sharing(model):
        return HFSharedPrefixBackend(model, processor)
    if share_prompt:
        note_naive_fallback(model)
    return HFNaiveBackend(model, processor)
