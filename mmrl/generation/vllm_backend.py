"""`rollout.backend: vllm` — a vLLM engine colocated with the trainer on the same GPU (the `vllm` extra; CUDA only).

What runs where, per training step (one engine per training process, on that process's GPU, tensor parallel 1):
- rollout: the engine wakes up (weights first), the policy's current weights are copied into it (`sync_weights`:
  after the previous step's optimizer steps, so every rollout samples from the weights the trainer holds), the KV cache
  wakes up and the prefix cache is reset (its blocks were computed with the old weights); the engine samples
  `params.n` completions per prompt (prefix caching on: the prompt and its image are prefilled once per group), then
  goes to sleep at level 2 (weights and KV cache freed) so the training forward/backward gets the memory back.
- update: the trainer recomputes every log-prob itself (`completion_logprobs`); the engine's own log-probs (taken
  after temperature: `logprobs_mode="processed_logprobs"`, vLLM >= 0.10.2) only measure and correct the mismatch
  (`algorithm.tis_cap`, truncated importance sampling in `mmrl.rl.update`). With top-k/top-p or min_new_tokens they
  are renormalised over a truncated vocabulary, not comparable with the trainer's, and dropped (`logprobs_comparable`).

Weight sync: the policy's state dict, tensor by tensor, into the engine's `load_weights` (vLLM maps transformers'
names). A LoRA layer's weight goes in merged (W + scale * B A, computed out of place: the policy's base is never
written, so a bf16 base cannot drift), so the engine always holds the merged model; FSDP2 shards (DTensor) are gathered one tensor at a time with `full_tensor()` on every process (each process
feeds its own engine). FSDP1 flat parameters are not supported. The engine is started from the policy's config and
processor with dummy weights, then synced: no checkpoint is written or read.

Prompts go in as text (the chat template of the data config, as `encode_one` renders it) plus the sample's images
(resized by `prepare_sample_images`) as `multi_modal_data`, so vLLM's processor expands exactly the image tokens the
trainer's forward sees. Sampling follows `SamplingParams` and the HF backend's stop rules: the model's end-of-turn
ids and `stop_token_ids` stop (and stay in `token_ids`), a stop string cuts the text, image placeholders are never
sampled.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from mmrl.data.sample import Sample
from mmrl.errors import UserError
from mmrl.generation.decoding import attach_token_rules, cut_at_stop, template_stops
from mmrl.generation.hf_context import prompt_to_sample
from mmrl.generation.rollout_batch import RolloutBatch
from mmrl.generation.types import Completion, Prompt, SamplingParams
from mmrl.models.placement import compute_dtype, model_device

# vLLM options of the engine this backend starts (the ones that matter for colocated RL).
ENGINE_DEFAULTS: dict[str, Any] = {
    "enable_sleep_mode": True,  # sleep between rollouts: the trainer gets the GPU memory back
    "enable_prefix_caching": True,  # the G samples of a group share the prompt's (and its image's) prefill
    "logprobs_mode": "processed_logprobs",  # log-probs after temperature, as the trainer computes them
    "load_format": "dummy",  # weights come from the policy (sync_weights), never from disk
}


def require_vllm() -> None:
    """Raise a one-line UserError (exit 2) when vLLM cannot run here: the extra is missing, the installed vLLM is
    built for another torch (or is not a release mmrl is paired with), or no CUDA device."""
    from importlib import metadata

    from mmrl.generation.vllm_pairs import install_hint, pair_problem

    if importlib.util.find_spec("vllm") is None:
        raise UserError(f"rollout.backend=vllm needs vLLM, which is not installed: {install_hint(torch.__version__)} "
                        "(CUDA GPUs only), or set rollout.backend=hf")
    problem = pair_problem(metadata.version("vllm"), metadata.requires("vllm"), torch.__version__)
    if problem is not None:
        raise UserError(f"rollout.backend=vllm: {problem}")
    if not torch.cuda.is_available():
        raise UserError("rollout.backend=vllm needs a CUDA device (vLLM does not run on CPU); set rollout.backend=hf")


def logprobs_comparable(params: SamplingParams) -> bool:
    """Whether the engine's log-probs can be compared with the trainer's (full-vocabulary softmax of logits /
    temperature). vLLM's processed log-probs are renormalised over the tokens that survive top-k/top-p, and over the
    non-stop tokens while `min_new_tokens` forbids them: the difference then carries log(kept mass), which is not a
    rollout/trainer mismatch, and TIS would scale every token's gradient by that mass (TRL issue 6789). The
    placeholder ban (`bad_words`) renormalises too, by the placeholders' probability, which a trained model puts at
    ~0."""
    return params.top_k == 0 and params.top_p >= 1.0 and params.min_new_tokens == 0


_NOTED_INCOMPARABLE: set[tuple[int, float, int]] = set()


def _note_incomparable(params: SamplingParams) -> None:
    key = (params.top_k, params.top_p, params.min_new_tokens)
    if key not in _NOTED_INCOMPARABLE:
        _NOTED_INCOMPARABLE.add(key)
        logging.getLogger(__name__).warning(
            "rollout.backend=vllm: top_k=%s top_p=%s min_new_tokens=%s truncate the sampling distribution, so the "
            "engine's log-probs are not comparable with the trainer's: the rollout/trainer mismatch is not measured "
            "and truncated importance sampling (algorithm.tis_cap) is off", *key)


def _prompt_inputs(sample: Sample, processor: Any, data_cfg: Any) -> dict[str, Any]:
    """vLLM's input for one sample: the rendered chat text and its resized images (as `encode_one` prepares them)."""
    from mmrl.data.collate import _chat_text
    from mmrl.data.templates import build_messages
    from mmrl.data.vision import prepare_sample_images

    images = prepare_sample_images(sample, data_cfg)
    messages = build_messages(sample, getattr(data_cfg, "system_prompt", None), getattr(data_cfg, "prompt_suffix", None))
    inputs: dict[str, Any] = {"prompt": _chat_text(processor, messages, add_generation_prompt=True,
                                                   template_kwargs=getattr(data_cfg, "chat_template_kwargs", None))}
    if images:
        # Already on the processor's grid within data.min/max_pixels: its own resize keeps them as they are (as
        # `encode_one`), and vLLM counts the image tokens with the same rule.
        inputs["multi_modal_data"] = {"image": images}
    return inputs


def _video_config(processor: Any, model_type: str) -> dict[str, Any] | None:
    """The video processor config of a Qwen-VL processor assembled without one (no torchvision where it was loaded;
    the benchmark's presets), from its image processor: vLLM's processor for these architectures loads one."""
    image = getattr(processor, "image_processor", None)
    if getattr(processor, "video_processor", None) is not None or image is None or not model_type.startswith("qwen"):
        return None
    size = {"shortest_edge": image.size["shortest_edge"], "longest_edge": image.size["longest_edge"]}
    config: dict[str, Any] = {"size": size, "patch_size": image.patch_size,
                              "temporal_patch_size": image.temporal_patch_size, "merge_size": image.merge_size}
    if model_type.startswith("qwen3"):  # bounds pixels through `size` only
        return {"video_processor_type": "Qwen3VLVideoProcessor", **config}
    return {"video_processor_type": "Qwen2VLVideoProcessor", "min_pixels": size["shortest_edge"],
            "max_pixels": size["longest_edge"], **config}


def _engine_processor(processor: Any, data_cfg: Any) -> Any:
    """The processor vLLM gets. On the 28-pixel grid (Qwen2/2.5-VL) the trainer's encoding hands its processor
    images already resized within data.min/max_pixels and turns its resize off (`encode_one`); vLLM's processor
    always resizes, within its own pixel bounds (3136 pixels at least for the released Qwen2.5-VL, where data's
    default is 784). Its bounds are widened to cover data's, so an on-grid image passes unchanged and the engine sees
    the trainer's image tokens."""
    from mmrl.data.collate import _takes_28_grid

    if not _takes_28_grid(processor):  # other grids resize on both sides, with the same processor settings
        return processor
    engine = copy.deepcopy(processor)
    image = engine.image_processor
    low = min(int(image.size["shortest_edge"]), 28 * 28)  # DataConfig's smallest min_pixels
    high = max(int(image.size["longest_edge"]), int(getattr(data_cfg, "max_pixels", 0) or 0))
    image.size = {"shortest_edge": low, "longest_edge": high}
    for name, value in (("min_pixels", low), ("max_pixels", high)):
        if getattr(image, name, None) is not None:
            setattr(image, name, value)
    return engine


def write_engine_dir(model: Any, processor: Any, out_dir: str, data_cfg: Any = None) -> None:
    """The directory the engine starts from: the policy's config and its processor (`_engine_processor`), no
    weights. `save_processor`, not `processor.save_pretrained`: the latter fails on a processor without a video
    processor."""
    from mmrl.models.processor import save_processor

    inner = getattr(model, "module", model)
    base = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    base.config.save_pretrained(out_dir)
    save_processor(_engine_processor(processor, data_cfg), out_dir,
                   video_config=_video_config(processor, str(base.config.model_type)))


def policy_weights(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor) of the policy, as transformers names them: LoRA merged, FSDP2 shards gathered, one tensor
    at a time (peak memory: one full tensor). The caller copies each tensor as it comes (a plain weight is the
    policy's own storage).

    A LoRA layer's weight is computed out of place, W + scale * B A in float32 rounded once to W's dtype; the base is
    never written. peft's `merge_adapter()` / `unmerge_adapter()` adds and subtracts the delta in the base's dtype: in
    a bf16 base each round trip rounds twice, and the frozen base drifted a little at every weight sync."""
    inner = getattr(model, "module", model)  # DDP
    peft = hasattr(inner, "merge_adapter")
    deltas = _lora_deltas(inner) if peft else {}
    for name, tensor in inner.state_dict().items():
        delta = deltas.get(name)
        if peft:
            if "lora_" in name or "original_module" in name:
                continue
            name = name.removeprefix("base_model.model.").replace(".base_layer", "")
            name = name.replace(".modules_to_save.default", "")
        if hasattr(tensor, "full_tensor"):  # FSDP2 DTensor shard: gather it (a collective on every process)
            tensor = tensor.full_tensor()
        tensor = tensor.detach()
        if delta is not None:
            tensor = (tensor.float() + delta()).to(tensor.dtype)
        yield name, tensor


def _lora_deltas(peft_model: Any) -> dict[str, Any]:
    """State-dict name of each LoRA base weight -> a function computing its float32 delta (scale * B A) on call."""
    from peft.tuners.lora import LoraLayer

    out: dict[str, Any] = {}
    for module_name, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer) or getattr(module, "merged", False):
            continue
        if getattr(module, "use_dora", {}) and any(module.use_dora.values()):
            raise UserError("model.lora: a DoRA adapter cannot be synced into the vLLM engine; use plain LoRA")
        adapters = [a for a in module.active_adapters if a in module.lora_A]
        if adapters:
            out[f"{module_name}.base_layer.weight"] = _delta_of(module, adapters)
    return out


def _delta_of(layer: Any, adapters: list[str]) -> Any:
    def delta() -> torch.Tensor:
        total = None
        for adapter in adapters:
            a, b = (_whole(layer.lora_A[adapter].weight), _whole(layer.lora_B[adapter].weight))
            part = b.float() @ a.float() * layer.scaling[adapter]
            part = part.T if layer.fan_in_fan_out else part
            total = part if total is None else total + part
        return total

    return delta


def _whole(param: torch.Tensor) -> torch.Tensor:
    """A parameter as one detached tensor (an FSDP2 shard gathered)."""
    return (param.full_tensor() if hasattr(param, "full_tensor") else param).detach()


class VLLMBackend:
    """The `GenerationBackend` protocol (and `rollout`, the training form) over a colocated vLLM engine."""

    takes_samples = True  # rollouts hand it the Samples: vLLM's processor encodes the prompt and its images itself

    def __init__(self, model: Any, processor: Any, data_cfg: Any = None, gpu_memory_utilization: float = 0.3,
                 max_model_len: int | None = None, seed: int = 0, **engine_options: Any) -> None:
        require_vllm()
        from vllm import LLM

        from mmrl.config.data import DataConfig

        self.model = model
        self.processor = processor
        self.data_cfg = data_cfg if data_cfg is not None else DataConfig()
        attach_token_rules(self, model, processor)
        # The engine runs in this process, so its model is reachable for the weight copy (no second process).
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self._dir = tempfile.TemporaryDirectory(prefix="mmrl-vllm-")  # config + processor only, never weights
        write_engine_dir(model, processor, self._dir.name, self.data_cfg)
        dtype = compute_dtype(model)
        options = dict(ENGINE_DEFAULTS, model=self._dir.name, dtype=str(dtype).removeprefix("torch."),
                       gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len, seed=seed)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            options["distributed_executor_backend"] = "external_launcher"  # one engine per training process
        options.update(engine_options)
        self.llm = LLM(**options)
        self._asleep = False
        self.sync_weights()

    # -- weights and memory -------------------------------------------------------------------------------------
    def _load_weights(self, weights: Iterator[tuple[str, torch.Tensor]]) -> None:
        try:  # the in-process engine's model (VLLM_ENABLE_V1_MULTIPROCESSING=0), as TRL's colocate mode reaches it
            executor = self.llm.llm_engine.model_executor
            worker = getattr(executor.driver_worker, "worker", executor.driver_worker)
            model = worker.model_runner.model
        except AttributeError:  # a vLLM where that path moved: run the load on the worker's model
            self.llm.apply_model(lambda engine_model: engine_model.load_weights(weights=weights))
            return
        model.load_weights(weights=weights)

    def sync_weights(self) -> None:
        """Copy the policy's current weights into the engine; its prefix cache is stale after, so reset it."""
        self._load_weights(policy_weights(self.model))
        self.llm.reset_prefix_cache()

    def _wake(self) -> None:
        if self._asleep:
            # The training step's freed activations are still held by torch's caching allocator, which the engine's
            # own allocator cannot use: hand them back to the driver first, or the engine's weights and KV cache
            # do not fit where they fit at start (TRL's colocate mode does the same).
            torch.cuda.empty_cache()
            try:
                self.llm.wake_up(tags=["weights"])  # weights first: the KV cache stays freed during the copy
            except TypeError:  # a vLLM without wake-up tags
                self.llm.wake_up()
            self.sync_weights()
            try:
                self.llm.wake_up(tags=["kv_cache"])
            except TypeError:
                pass
            self._asleep = False
        else:
            self.sync_weights()

    def sleep(self) -> None:
        """Free the engine's GPU memory (weights and KV cache: they are re-synced on the next call)."""
        if not self._asleep:
            self.llm.sleep(level=2)
            self._asleep = True

    # -- sampling -----------------------------------------------------------------------------------------------
    def _vllm_params(self, params: SamplingParams, seed: int | None) -> Any:
        from vllm import SamplingParams as VLLMParams

        greedy = params.greedy
        return VLLMParams(
            n=params.n, temperature=params.temperature, top_p=1.0 if greedy else params.top_p,
            top_k=-1 if greedy or params.top_k == 0 else params.top_k, max_tokens=params.max_new_tokens,
            min_tokens=params.min_new_tokens, stop=list(params.stop) or None,
            stop_token_ids=sorted({*self.end_ids, *params.stop_token_ids}), include_stop_str_in_output=True,
            skip_special_tokens=False, seed=None if greedy else seed, logprobs=0,  # 0: the sampled token's only
            bad_words=[self.tokenizer.decode([i]) for i in self.banned_ids] or None,
        )

    def _inputs(self, prompt: Any, data_cfg: Any) -> dict[str, Any]:
        if isinstance(prompt, dict) and "prompt_token_ids" in prompt:  # a multi-turn episode's conversation so far
            return prompt  # (`mmrl.generation.multiturn.vllm_input`): token ids as sampled, images expanded
        if isinstance(prompt, Prompt):
            prompt = prompt_to_sample(prompt)
        if not isinstance(prompt, Sample):
            raise TypeError("the vLLM backend takes Prompt or Sample prompts (it encodes them and their images "
                            f"itself), not {type(prompt).__name__}")
        return _prompt_inputs(prompt, self.processor, data_cfg)

    @torch.no_grad()
    def rollout(self, prompts: Sequence[Prompt | Sample], params: SamplingParams,
                generator: torch.Generator | None = None, data_cfg: Any = None,
                prompt_seeds: Sequence[int] | None = None) -> RolloutBatch:
        """`params.n` completions per prompt as padded tensors on the policy's device, with the engine's log-probs
        (None when `logprobs_comparable` is False). `generator` draws each prompt's seed (one continuing stream
        across calls); `prompt_seeds` (one per prompt) overrides it, as on the HF backend: a prompt's completions then
        do not depend on which other prompts share the call; `data_cfg` overrides the template settings (a stage's
        prompt suffix)."""
        device = model_device(self.model)
        inputs = [self._inputs(p, data_cfg if data_cfg is not None else self.data_cfg) for p in prompts]
        seeds = self._seeds(len(inputs), params, generator, prompt_seeds, device)
        self._wake()
        try:
            outputs = self.llm.generate(inputs, [self._vllm_params(params, s) for s in seeds], use_tqdm=False)
        finally:
            self.sleep()
        return self._batch(outputs, params, device)

    @staticmethod
    def _seeds(count: int, params: SamplingParams, generator: torch.Generator | None,
               prompt_seeds: Sequence[int] | None, device: torch.device) -> list[int | None]:
        """vLLM's per-request seed of each prompt: `prompt_seeds`, else drawn from `generator` (or `params.seed`)."""
        if prompt_seeds is not None:
            if len(prompt_seeds) != count:
                raise ValueError(f"prompt_seeds: {len(prompt_seeds)} seeds for {count} prompts")
            return [int(seed) for seed in prompt_seeds]
        if generator is None and params.seed is not None:
            generator = torch.Generator(device=device).manual_seed(params.seed)
        return [int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device))
                if generator is not None else None for _ in range(count)]

    def _batch(self, outputs: list[Any], params: SamplingParams, device: torch.device) -> RolloutBatch:
        rows = [sample for out in outputs for sample in out.outputs]
        width = max((len(r.token_ids) for r in rows), default=0)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long, device=device)
        mask = torch.zeros(len(rows), width, dtype=torch.long, device=device)
        # Only log-probs the trainer's can be compared with (see `logprobs_comparable`), and only when every row has
        # them: zeros standing in for missing ones would read as a huge mismatch and skew the TIS weights.
        comparable = logprobs_comparable(params)
        if not comparable:
            _note_incomparable(params)
        with_logprobs = comparable and bool(rows) and all(r.logprobs is not None for r in rows)
        lps = torch.zeros(len(rows), width, dtype=torch.float32, device=device) if with_logprobs else None
        texts, truncated = [], []
        for i, row in enumerate(rows):
            tokens = list(row.token_ids)
            ids[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long, device=device)
            mask[i, : len(tokens)] = 1
            if lps is not None:
                chosen = [step[token].logprob for step, token in zip(row.logprobs, tokens)]
                lps[i, : len(chosen)] = torch.tensor(chosen, dtype=torch.float32, device=device)
            text, _ = cut_at_stop(self.decoder.text(tokens), params.stop)
            texts.append(text)
            truncated.append(row.finish_reason == "length")
        prompt_tokens = sum(len(out.prompt_token_ids or []) for out in outputs)
        counters = {"prefill_tokens": prompt_tokens, "generated_tokens": int(mask.sum()),
                    "template_token_stops": template_stops(self, (r.token_ids[-1] for r in rows if r.token_ids))}
        prompt_index = torch.arange(len(rows), device=device) // params.n
        return RolloutBatch(prompt_index, ids, mask, torch.tensor(truncated, dtype=torch.bool, device=device), texts,
                            params.n, lps, counters)

    def generate(self, prompts: Sequence[Prompt | Sample], params: SamplingParams,
                 generator: torch.Generator | None = None) -> list[list[Completion]]:
        batch = self.rollout(prompts, params, generator)
        out: list[list[Completion]] = []
        for start in range(0, len(batch.texts), batch.group_size):
            group = []
            for row in range(start, start + batch.group_size):
                keep = batch.completion_mask[row].bool()
                group.append(Completion(
                    token_ids=batch.completion_ids[row][keep].tolist(), text=batch.texts[row],
                    finish_reason="length" if bool(batch.truncated[row]) else "stop",
                    logprobs=batch.logprobs[row][keep].tolist() if params.logprobs and batch.logprobs is not None
                    else None))
            out.append(group)
        return out

    def stream(self, prompt: Prompt | Sample, params: SamplingParams) -> Iterator[str]:
        """One delta, the whole text (the colocated engine is for rollouts; `mmrl serve` streams with the HF one)."""
        if params.n != 1:
            raise ValueError(f"stream: n must be 1 (got {params.n})")
        yield self.generate([prompt], params)[0][0].text


def make_vllm_backend(model: Any, processor: Any, share_prompt: bool = True, data_cfg: Any = None,
                      rollout_cfg: Any = None) -> VLLMBackend:
    """The `vllm` entry of the rollout backend registry (`share_prompt` is vLLM's prefix caching, always on)."""
    options: dict[str, Any] = {}
    if rollout_cfg is not None:
        options = {"gpu_memory_utilization": rollout_cfg.vllm_gpu_memory_utilization,
                   "max_model_len": rollout_cfg.vllm_max_model_len}
    return VLLMBackend(model, processor, data_cfg, **options)
