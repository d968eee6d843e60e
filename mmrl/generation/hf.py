"""The in-process HF backend: rollouts (n = G), greedy eval, builders, demos and `mmrl serve` all sample here.

`HFSharedPrefixBackend` (Qwen2-VL / Qwen2.5-VL / Qwen3-VL) prefills each prompt once — its image is vision-encoded
once and its tokens go through the LM once — repeats the KV cache n times and decodes the branches of all the call's
prompts in one batch (up to `max_batch_rows` rows; left padding, per-row M-RoPE positions, each prompt sampling from
its own random stream), dropping branches from the cache as they finish. `HFNaiveBackend` repeats the prompt n times
and calls `model.generate` (what TRL does); it is the comparison baseline and the fallback for other architectures.

`generate` / `stream` speak the protocol of `mmrl.generation.types`; `rollout` is the training form: the same
sampling, returned as padded tensors (`RolloutBatch`) with the sampler's log-probs.

Context: a prompt whose length plus `max_new_tokens` exceeds the model's `max_position_embeddings` is refused before
anything is sampled (`ContextOverflow`, a `UserError`: exit 2 on the CLI, a 400 from `mmrl serve`), as vLLM refuses
`prompt + max_tokens > max_model_len`. `model.generate` alone would decode past the context (positions the model never
saw); `max_new_tokens` is never cut down silently. Lower `rollout.max_completion_length` (or `max_tokens`) instead.

>>> backend = HFSharedPrefixBackend(model, processor)  # doctest: +SKIP
>>> [[c.text for c in group] for group in backend.generate([Prompt.from_question("2+2?")], SamplingParams(n=2))]  # doctest: +SKIP
[['<think> ... </think><answer> 4 </answer>', '<answer> 5 </answer>']]
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Generator, Sequence
from typing import Any, Union

import torch

from mmrl.data.sample import Sample
from mmrl.generation.decoding import attach_token_rules, cut_at_stop, eos_token_ids, held_back, template_stops
from mmrl.generation.hf_context import (
    TokenStreamer,
    check_context,
    eval_mode,
    neutral_generation_config,
    prompt_to_sample,
)
from mmrl.generation.hf_decode import DecodeRules, decode_shared_prefix
from mmrl.generation.hf_decode import Row as _Row
from mmrl.generation.rollout_batch import RolloutBatch
from mmrl.generation.types import Completion, Prompt, SamplingParams
from mmrl.models.logprobs import repeat_prompt
from mmrl.models.placement import compute_autocast, model_device, to_model_device
from mmrl.models.prefix import (
    reset_rope_deltas,
    strip_padding,
    unwrap,
)
from mmrl.models.vision_tower import count_vision, vision_module

# What the HF backend accepts as a prompt: chat messages, an mmrl Sample (encoded with the data config's template and
# image resize), or an already encoded processor output (batch dim 1).
PromptLike = Union[Prompt, Sample, dict[str, Any]]
TokenCallback = Callable[[int], None]
# Rows (prompts x n) decoded in one batch by the shared-prefix backend: bounds the KV cache of a decode step (a 7B
# Qwen2.5-VL holds ~57 KB per token and row in bf16: 64 rows of 2k tokens ~ 7 GB) while giving the CPU and the GPU
# matmuls wide enough to pay for a step's fixed costs.
DEFAULT_MAX_BATCH_ROWS = 64

__all__ = ["HFSharedPrefixBackend", "HFNaiveBackend", "HFBackend", "DEFAULT_MAX_BATCH_ROWS", "count_vision",
           "vision_module", "eos_token_ids"]


class _Cancelled(Exception):
    """Raised from a token callback to stop a stream whose reader went away."""


class _HFBackend:
    def __init__(self, model: Any, processor: Any, data_cfg: Any = None) -> None:
        from mmrl.config.data import DataConfig

        self.model = model
        self.processor = processor
        self.data_cfg = data_cfg if data_cfg is not None else DataConfig()
        attach_token_rules(self, model, processor)
        self._lock = threading.Lock()  # one model, one call at a time (server and demo threads share a backend)

    # -- the protocol -------------------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[PromptLike], params: SamplingParams,
                 generator: torch.Generator | None = None) -> list[list[Completion]]:
        """`params.n` completions per prompt. `generator` (on the model's device) overrides `params.seed`, so a caller
        going through many batches draws one continuing random stream."""
        return self.completions(self.rollout(prompts, params, generator), params)

    @staticmethod
    def completions(batch: RolloutBatch, params: SamplingParams) -> list[list[Completion]]:
        """A rollout's rows as per-prompt `Completion` lists."""
        out: list[list[Completion]] = []
        for start in range(0, len(batch.texts), batch.group_size):
            group = []
            for row in range(start, start + batch.group_size):
                mask = batch.completion_mask[row].bool()
                scores = batch.logprobs[row][mask].tolist() if params.logprobs and batch.logprobs is not None else None
                group.append(Completion(token_ids=batch.completion_ids[row][mask].tolist(), text=batch.texts[row],
                                        finish_reason="length" if bool(batch.truncated[row]) else "stop",
                                        logprobs=scores))
            out.append(group)
        return out

    def stream(self, prompt: PromptLike, params: SamplingParams) -> Generator[str, None, Completion]:
        """Text deltas of one completion, while it is decoded (a worker thread samples; this generator decodes).
        The generator's return value (`StopIteration.value`) is the whole `Completion` (finish reason, token ids)."""
        if params.n != 1:
            raise ValueError(f"stream: n must be 1 (got {params.n})")
        tokens: queue.Queue[int | None] = queue.Queue()
        cancelled = threading.Event()
        result: dict[str, Any] = {}

        def on_token(token: int) -> None:
            if cancelled.is_set():
                raise _Cancelled
            tokens.put(token)

        def work() -> None:
            try:
                result["batch"] = self.rollout([prompt], params, on_token=on_token)
            except _Cancelled:
                pass
            except BaseException as err:  # re-raised in the reader's thread
                result["error"] = err
            finally:
                tokens.put(None)

        worker = threading.Thread(target=work, name="mmrl-stream", daemon=True)
        worker.start()
        ids: list[int] = []
        shown = ""
        try:
            while (token := tokens.get()) is not None:
                ids.append(token)
                text = self.decoder.text(ids)
                if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
                    continue
                text, hit = cut_at_stop(text, params.stop)
                safe = text if hit else text[: len(text) - held_back(text, params.stop)]
                if len(safe) > len(shown) and safe.startswith(shown):
                    yield safe[len(shown):]
                    shown = safe
            worker.join()
            if "error" in result:
                raise result["error"]
            final = result["batch"].texts[0]
            if len(final) > len(shown) and final.startswith(shown):
                yield final[len(shown):]
            return self.completions(result["batch"], params)[0][0]  # StopIteration.value, for callers that want it
        finally:
            cancelled.set()

    # -- the training form --------------------------------------------------------------------------------------
    def encode(self, prompt: PromptLike) -> dict[str, Any]:
        """The processor output (batch dim 1) for a prompt; raises DataError / ValueError on a bad one."""
        from mmrl.data.collate import encode_one

        if isinstance(prompt, dict):
            return prompt
        sample = prompt if isinstance(prompt, Sample) else prompt_to_sample(prompt)
        return encode_one(self.processor, sample, self.data_cfg)

    @torch.no_grad()
    def rollout(self, prompts: Sequence[PromptLike], params: SamplingParams, generator: torch.Generator | None = None,
                on_token: TokenCallback | None = None, prompt_seeds: Sequence[int] | None = None) -> RolloutBatch:
        """`params.n` completions per prompt as padded tensors. `generator` (on the model's device) overrides
        `params.seed`; `prompt_seeds` (one per prompt) overrides both: prompt i samples from its own stream, so its
        completions do not depend on which other prompts share the call (or the process); `on_token` receives each
        sampled token of a single-row call (streaming)."""
        device = model_device(self.model)
        if prompt_seeds is not None and len(prompt_seeds) != len(prompts):
            raise ValueError(f"prompt_seeds: {len(prompt_seeds)} seeds for {len(prompts)} prompts")
        if generator is None and params.seed is not None and not params.greedy:
            generator = torch.Generator(device=device).manual_seed(params.seed)
        encoded = [self.encode(p) for p in prompts]  # before the lock: a bad prompt fails without waiting
        for index, (prompt, enc) in enumerate(zip(prompts, encoded, strict=True)):
            check_context(self.model, enc, params.max_new_tokens,
                          f"sample {prompt.id}" if isinstance(prompt, Sample) else f"prompt {index}")
        counters: dict[str, Any] = {"prefill_tokens": 0}
        with self._lock, eval_mode(self.model), count_vision(vision_module(self.model), counters), \
                compute_autocast(self.model):
            on_device = [to_model_device(strip_padding(prompt), self.model) for prompt in encoded]
            rows = self._sample_all(on_device, params, self._streams(len(on_device), params, generator, prompt_seeds),
                                    counters, on_token)
        return self._batch(rows, params, counters, device)

    def _streams(self, count: int, params: SamplingParams, generator: torch.Generator | None,
                 prompt_seeds: Sequence[int] | None) -> list[torch.Generator | None]:
        """The generator each prompt samples from: its own from `prompt_seeds`, else the caller's shared one."""
        if prompt_seeds is None:
            return [generator] * count
        # A per-prompt stream lives on the sampling device (CUDA rejects a CPU generator).
        device = model_device(self.model)
        return [torch.Generator(device=device).manual_seed(int(seed)) for seed in prompt_seeds]

    def _sample_all(self, prompts: list[dict[str, Any]], params: SamplingParams,
                    streams: list[torch.Generator | None], counters: dict[str, Any],
                    on_token: TokenCallback | None) -> list[_Row]:
        raise NotImplementedError

    def _stop_ids(self, params: SamplingParams) -> list[int]:
        return sorted({*self.end_ids, *params.stop_token_ids})

    def _batch(self, rows: list[_Row], params: SamplingParams, counters: dict[str, Any],
               device: torch.device) -> RolloutBatch:
        """Pad rows to one length and decode; tensors come back on the model's device."""
        width = max((len(r.ids) for r in rows), default=0)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long, device=device)
        mask = torch.zeros(len(rows), width, dtype=torch.long, device=device)
        with_logprobs = bool(rows) and all(r.logprobs is not None for r in rows)
        lps = torch.zeros(len(rows), width, dtype=torch.float32, device=device) if with_logprobs else None
        texts, truncated = [], []
        for i, row in enumerate(rows):
            end = len(row.ids)
            ids[i, :end] = row.ids.to(device)
            mask[i, :end] = 1
            if lps is not None:
                lps[i, :end] = row.logprobs.to(device)
            text, hit = cut_at_stop(self.decoder.text(row.ids.tolist()), params.stop)
            texts.append(text)
            truncated.append(not (row.finished or hit))
        counters["generated_tokens"] = int(mask.sum())
        counters["template_token_stops"] = template_stops(self, (r.ids[-1] for r in rows if len(r.ids)))
        prompt_index = torch.arange(len(rows), device=device) // params.n
        return RolloutBatch(prompt_index, ids, mask, torch.tensor(truncated, dtype=torch.bool, device=device), texts,
                            params.n, lps, counters)


class HFSharedPrefixBackend(_HFBackend):
    """Prefill each prompt once, share its KV cache across its n samples, and decode the samples of several prompts
    as one batch (at most `max_batch_rows` rows at a time; see `mmrl.generation.hf_decode`)."""

    def __init__(self, model: Any, processor: Any, data_cfg: Any = None,
                 max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS) -> None:
        super().__init__(model, processor, data_cfg)
        if max_batch_rows < 1:
            raise ValueError(f"max_batch_rows must be >= 1 (got {max_batch_rows})")
        self.max_batch_rows = max_batch_rows

    def _streams(self, count: int, params: SamplingParams, generator: torch.Generator | None,
                 prompt_seeds: Sequence[int] | None) -> list[torch.Generator | None]:
        """Sampling with a shared generator: each prompt gets its own stream seeded by one draw of it (in prompt
        order), so its completions do not depend on which prompts decode in the same batch."""
        if prompt_seeds is not None or params.greedy or generator is None:
            return super()._streams(count, params, generator, prompt_seeds)
        seeds = torch.randint(0, 2**62, (count,), generator=generator, device=generator.device).tolist()
        return super()._streams(count, params, None, seeds)

    def _sample_all(self, prompts: list[dict[str, Any]], params: SamplingParams,
                    streams: list[torch.Generator | None], counters: dict[str, Any],
                    on_token: TokenCallback | None) -> list[_Row]:
        rules = DecodeRules(self.pad_id, self._stop_ids(params), list(self.banned_ids), self._hit_stop_string)
        per_chunk = max(1, self.max_batch_rows // params.n)  # whole prompts only: a prompt's n rows stay together
        shared = params.greedy or len(set(map(id, streams))) == 1  # one stream for all: no per-prompt draws
        rows: list[_Row] = []
        for first in range(0, len(prompts), per_chunk):
            chunk = slice(first, first + per_chunk)
            rows.extend(decode_shared_prefix(self.model, prompts[chunk], params,
                                             streams[:1] if shared else streams[chunk], rules, counters, on_token))
        return rows

    def _hit_stop_string(self, tokens: torch.Tensor, alive: torch.Tensor, step: int, stop: Sequence[str]) -> torch.Tensor:
        texts = [self.decoder.text(tokens[int(i), : step + 1].tolist()) for i in alive]
        return torch.tensor([any(s in t for s in stop) for t in texts], dtype=torch.bool, device=tokens.device)


class HFNaiveBackend(_HFBackend):
    """`model.generate` on the prompt repeated n times (image encoded n times): baseline and generic fallback."""

    def _sample_all(self, prompts: list[dict[str, Any]], params: SamplingParams,
                    streams: list[torch.Generator | None], counters: dict[str, Any],
                    on_token: TokenCallback | None) -> list[_Row]:
        return [row for prompt, stream in zip(prompts, streams, strict=True)
                for row in self._sample(prompt, params, stream, counters, on_token)]

    def _sample(self, prompt: dict[str, Any], params: SamplingParams, generator: torch.Generator | None,
                counters: dict[str, Any], on_token: TokenCallback | None) -> list[_Row]:
        inner = unwrap(self.model)
        device = model_device(self.model)
        options: dict[str, Any] = (
            {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k}
            if not params.greedy else {"do_sample": False}
        )
        if self.banned_ids:
            options["suppress_tokens"] = self.banned_ids
        if params.stop:
            options.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        if on_token is not None:
            options["streamer"] = TokenStreamer(on_token)
        stop_ids = self._stop_ids(params)
        batch = repeat_prompt(prompt, params.n)
        length = batch["input_ids"].shape[1]
        counters["prefill_tokens"] += length * params.n
        # generate() has no generator argument: a forked global RNG (CPU and the model's CUDA device) is seeded from it.
        rng: contextlib.AbstractContextManager = contextlib.nullcontext()
        if generator is not None:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
            devices = [device.index if device.index is not None else torch.cuda.current_device()] \
                if device.type == "cuda" else []
            rng = torch.random.fork_rng(devices=devices)
        reset_rope_deltas(self.model)
        with rng, neutral_generation_config(inner):
            if generator is not None:
                torch.manual_seed(seed)
            out = self.model.generate(**batch, max_new_tokens=params.max_new_tokens,
                                      min_new_tokens=params.min_new_tokens, eos_token_id=stop_ids,
                                      pad_token_id=self.pad_id, **options)
        reset_rope_deltas(self.model)
        stop = torch.tensor(stop_ids, dtype=torch.long, device=out.device)
        rows = []
        for row in out[:, length:]:
            hits = torch.isin(row, stop).nonzero()
            if len(hits):
                rows.append(_Row(row[: int(hits[0]) + 1], None, True))
                continue
            end = len(row)
            while end and int(row[end - 1]) == self.pad_id and params.stop:  # padding after a stop string
                end -= 1
            rows.append(_Row(row[:end], None, end < params.max_new_tokens))
        return rows


HFBackend = Union[HFSharedPrefixBackend, HFNaiveBackend]
