"""One step's experience: encode prompts once, roll out G completions each, score them.

A `Group` is one prompt with its G completions; everything downstream (log-probs, loss) works group by group, so the
prompt (and its image) is encoded and computed once per group.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from inspect import signature
from typing import Any, Protocol, runtime_checkable

import torch

from mmrl.config import MMRLConfig
from mmrl.config.data import DataConfig
from mmrl.data.collate import encode_one
from mmrl.data.prompt_order import PromptSampler, shard
from mmrl.data.sample import Sample
from mmrl.generation import GenerationBackend, SamplingParams
from mmrl.generation.backends import backend_device
from mmrl.generation.rollout_batch import RolloutBatch
from mmrl.models.interface import ModelInterface
from mmrl.models.placement import to_device
from mmrl.models.training_forward import ImageFeatures, capture_image_features, match_image_features
from mmrl.parallel.distributed import all_reduce_sum, stream_seed
from mmrl.rewards.composite import RewardComposite
from mmrl.rl.stages import ResolvedStage


@runtime_checkable
class RolloutBackend(GenerationBackend, Protocol):
    """What a training rollout needs of a generation backend: the `GenerationBackend` protocol (`generate`, `stream`)
    over the policy itself (`model`: its outputs live on that model's device), plus `rollout`, the same sampling
    returned as padded tensors with the sampler's log-probs. The HF backends and the vLLM backend are ones.

    Backends that take per-prompt random streams add `prompt_seeds=` to `rollout`; one that encodes `Sample`s itself
    (vLLM) says `takes_samples = True` and takes `data_cfg=`."""

    model: Any

    def rollout(self, prompts: Sequence[Any], params: SamplingParams,
                generator: torch.Generator | None = None) -> RolloutBatch: ...


@dataclass(frozen=True)
class Group:
    """One prompt's rollout and its scores, as the rollout made them (the step's advantages and log-probs are the
    update's own data: `mmrl.rl.training_batch.TrainingGroup`)."""

    sample: Sample
    prompt: dict[str, torch.Tensor]
    completion_ids: torch.Tensor  # [G, T]
    completion_mask: torch.Tensor  # [G, T]
    truncated: torch.Tensor  # [G] bool
    texts: list[str]
    rewards: torch.Tensor  # [G], NaN = unscorable
    components: dict[str, list[float | None]]
    sampler_logp: torch.Tensor | None = None  # [G, T]: the rollout engine's log-probs, when it returns them (TIS)
    # The rollout prefill's image features of this prompt, recorded when the vision tower is frozen (a constant of
    # the step): later forwards of the step reuse them instead of encoding the image again. None: encode as usual.
    image_features: ImageFeatures | None = None
    # Multi-turn (`mmrl.rl.episodes`): the G episodes behind the rows, and the first observation's images
    episodes: list[Any] | None = None
    first_images: list[Any] | None = None


def _columns(samples: list[Sample], group_size: int, lengths: list[int], max_len: int,
             interface: ModelInterface | None = None) -> dict[str, list[Any]]:
    rows = [dict(s.reward_columns(), group_id=i) for i, s in enumerate(samples) for _ in range(group_size)]
    keys = {k for row in rows for k in row}
    columns = {k: [row.get(k) for row in rows] for k in keys}
    # The frame this model answers boxes/points in (None: not known; the run refused to score coordinates then).
    columns["model_frame"] = [interface.pred_frame if interface else None] * len(lengths)
    columns["completion_length"] = lengths
    columns["max_completion_length"] = [max_len] * len(lengths)  # the stage's limit: `overlong`'s default max_length
    return columns


def _to_tensor(values: list[float | None], device: torch.device) -> torch.Tensor:
    return torch.tensor([math.nan if v is None else float(v) for v in values], dtype=torch.float32, device=device)


def rollout_groups(cfg: MMRLConfig, stage: ResolvedStage, samples: list[Sample], processor: Any,
                   backend: RolloutBackend, composite: RewardComposite, generator: torch.Generator,
                   data_cfg: DataConfig, seeds: list[int] | None = None,
                   interface: ModelInterface | None = None) -> tuple[list[Group], dict[str, Any]]:
    """Roll out and score `samples` (this process's share); the advantages come later, over the kept batch.

    `interface` (the model's, `mmrl.models.interface`): rewards see each completion as the model's whole turn (the
    part of it the chat template's generation prompt wrote, e.g. an opened `<think>`, first) and read boxes in the
    model's frame; the groups keep those texts (logged samples show what was scored), their token ids stay the
    sampled ones."""
    if not samples:
        return [], {}
    # The one place prompts meet the model's device; completions, rewards and advantages are created there too.
    device = backend_device(backend)
    prompts = [to_device(encode_one(processor, s, data_cfg), device) for s in samples]
    rc = cfg.rollout
    params = SamplingParams(n=stage.group_size, temperature=rc.temperature, top_p=rc.top_p, top_k=rc.top_k,
                            max_new_tokens=stage.max_completion_length,
                            min_new_tokens=min(rc.min_new_tokens, stage.max_completion_length), logprobs=True)
    recorded: list[ImageFeatures] = []  # the in-process rollout's image features (frozen tower only)
    if getattr(backend, "takes_samples", False):  # vLLM: its own processor encodes the samples and their images
        streams = {"prompt_seeds": seeds} if seeds is not None else {}
        batch = backend.rollout(samples, params, generator=generator, data_cfg=data_cfg, **streams)
    else:
        # Per-prompt random streams (when the backend takes them): a prompt's completions depend on the seed and its
        # global draw index only, not on how many processes share the step.
        streams = {"prompt_seeds": seeds} if seeds is not None and "prompt_seeds" in signature(backend.rollout).parameters \
            else {}
        with capture_image_features(getattr(backend, "model", None), recorded):
            batch = backend.rollout(prompts, params, generator=generator, **streams)
    lengths = batch.completion_mask.sum(dim=1).tolist()
    texts = [interface.whole_turn(t) for t in batch.texts] if interface is not None else list(batch.texts)
    scoring = time.perf_counter()
    result = composite.score(texts, _columns(samples, stage.group_size, lengths, stage.max_completion_length,
                                             interface))
    scoring = time.perf_counter() - scoring  # logged as rollout/reward_seconds: its share of the step
    total = _to_tensor(result.total, device)
    groups = []
    g = stage.group_size
    for i, (sample, prompt) in enumerate(zip(samples, prompts)):
        rows = slice(i * g, (i + 1) * g)
        groups.append(Group(
            sample=sample, prompt=prompt, completion_ids=batch.completion_ids[rows],
            completion_mask=batch.completion_mask[rows], truncated=batch.truncated[rows],
            texts=texts[rows], rewards=total[rows],
            sampler_logp=batch.logprobs[rows] if batch.logprobs is not None else None,
            components={name: values[rows] for name, values in result.components.items()},
            image_features=match_image_features(prompt, recorded),
        ))
    counters = {**dict(getattr(batch, "counters", {}) or {}), "reward_seconds": scoring}
    info = {"counters": counters, "reward_counters": dict(result.counters),
            "examples": getattr(result, "examples", {})}
    return groups, info


def _group_passes(group: Group, metric: str, low: float, high: float) -> bool:
    values = [v for v in group.components.get(metric, []) if v is not None]
    if not values:
        return False
    mean = sum(values) / len(values)
    return low < mean < high


def collect_step(cfg: MMRLConfig, stage: ResolvedStage, dataset: list[Sample], sampler: PromptSampler, rank: int,
                 world_size: int, *, processor: Any, backend: RolloutBackend, composite: RewardComposite,
                 generator: torch.Generator, data_cfg: DataConfig,
                 interface: ModelInterface | None = None) -> tuple[list[Group], dict[str, Any]]:
    """Draw the step's prompts, roll out and score, optionally filter groups online (refilling).

    The advantages come next, over the kept groups of every process (`mmrl.rl.training_batch`), with the KL term
    when it goes into the reward."""
    f = cfg.algorithm.online_filter
    wanted = len(shard(list(range(cfg.trainer.prompts_per_step)), rank, world_size))
    kept: list[Group] = []
    filtered = 0
    info: dict[str, Any] = {}
    rounds: list[dict[str, Any]] = []  # every rollout round's info: the step's counters cover them all
    for attempt in range(f.max_tries if f.enabled else 1):
        first = sampler.epoch * sampler.n_items + sampler.position  # global draw index of the step's first prompt
        indices = shard(sampler.next(cfg.trainer.prompts_per_step), rank, world_size)
        draws = shard(list(range(first, first + cfg.trainer.prompts_per_step)), rank, world_size)
        seeds = [stream_seed(cfg.trainer.seed, stage.index, d) for d in draws]
        groups, info = rollout_groups(cfg, stage, [dataset[i] for i in indices], processor, backend, composite,
                                      generator, data_cfg, seeds=seeds, interface=interface)
        rounds.append(info)
        if f.enabled:
            passing = [gr for gr in groups if _group_passes(gr, f.metric, f.low, f.high)]
            filtered += len(groups) - len(passing)
            groups = passing
        kept.extend(groups[: max(0, wanted - len(kept))])
        if not f.enabled or attempt == f.max_tries - 1:
            break
        # Every process draws in lockstep so the shared prompt order stays identical across ranks. Only a refill asks
        # the others: without the filter this function needs no process group (the rollout worker of a rank has none).
        if all_reduce_sum(max(0, wanted - len(kept)), world_size) == 0:
            break
    info = _merge_rounds(rounds)
    info["filtered_groups"] = filtered
    return kept, info


def _merge_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One info for the step from the info of each rollout round (more than one when the online filter refills).

    Every rollout counter is a total, so it is summed: tokens prefilled and generated, decode steps, vision encoder
    calls and images, reward seconds, and entropy_sum with entropy_tokens (the logged entropy, their ratio, stays the
    mean over every token sampled this step). Reward counters count items (timeouts, unscorable, errors): summed too.
    Examples keep the first one of each reward component."""
    merged: dict[str, Any] = {}
    for info in rounds:
        for part in ("counters", "reward_counters"):
            if part in info:
                totals = merged.setdefault(part, {})
                for key, value in info[part].items():
                    totals[key] = totals.get(key, 0) + value
        if "examples" in info:
            examples = merged.setdefault("examples", {})
            for name, example in info["examples"].items():
                examples.setdefault(name, example)
    return merged
