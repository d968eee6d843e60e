"""One step's experience of multi-turn RL: G episodes per start form a group; its advantage is over episode returns.

Mirrors `mmrl.rl.experience.collect_step` for `env.name` set: the step's starts are drawn (and sharded) the same way,
each start's G environments are built and reset (one instance per episode), `mmrl.generation.multiturn.run_episodes`
plays them, and each group becomes a `Group` whose completion is everything after the shared first prompt with the
environment's tokens masked out of the loss. The rewards are the episode returns (`env.episode_return`); per-episode
metrics (turns, success, return, tokens, termination reasons) go to the step's info.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from mmrl.config import MMRLConfig
from mmrl.config.data import DataConfig
from mmrl.data.collate import encode_one
from mmrl.data.prompt_order import PromptSampler, shard
from mmrl.data.sample import Sample
from mmrl.envs.registry import get_environment
from mmrl.envs.safe import ENV_FAULTS, TERMINATIONS, EpisodeEnded, ObservationLimits, SafeEnvironment
from mmrl.generation.backends import backend_device
from mmrl.generation.conversation import ObservationTail, template_tokens_in
from mmrl.generation.hf_context import context_length
from mmrl.generation.multiturn import Episode, EpisodeLimits, run_episodes
from mmrl.generation.types import SamplingParams
from mmrl.models.episode_forward import EPISODE_KEY
from mmrl.models.interface import ModelInterface
from mmrl.models.placement import to_device
from mmrl.parallel.distributed import stream_seed
from mmrl.rl.experience import Group, RolloutBackend
from mmrl.rl.stages import ResolvedStage


def _limits(cfg: MMRLConfig, data_cfg: DataConfig) -> ObservationLimits:
    return ObservationLimits(
        max_text_chars=cfg.env.max_observation_chars,
        max_images=cfg.env.max_images_per_turn,
        max_image_pixels=data_cfg.max_image_pixels,
        min_pixels=data_cfg.min_pixels,
        max_pixels=data_cfg.max_pixels,
    )


def _same_observation(a: Any, b: Any) -> bool:
    return (
        a.text == b.text
        and len(a.images) == len(b.images)
        and all(x.size == y.size and x.tobytes() == y.tobytes() for x, y in zip(a.images, b.images))
    )


def _start(
    cfg: MMRLConfig, sample: Sample, group_size: int, limits: ObservationLimits, processor: Any, data_cfg: DataConfig
) -> tuple[dict[str, Any], list[SafeEnvironment | None], list[Episode], list[Any]]:
    """A start's shared prompt (its first observation, encoded), its G environments (None: failed to start) and the
    episodes that already ended there."""
    factory = get_environment(cfg.env.name)
    envs: list[SafeEnvironment | None] = []
    failed: list[Episode] = []
    first = None
    for _ in range(group_size):
        try:
            env = SafeEnvironment(factory, dict(cfg.env.kwargs), cfg.env.step_timeout_s, limits)
            observation = env.reset(sample)
            injected = template_tokens_in(getattr(processor, "tokenizer", processor), observation.text)
            if injected:
                raise EpisodeEnded("bad_observation", f"reset: the text holds the chat template's token(s) {injected}")
            if first is not None and not _same_observation(first, observation):
                # the episode would act from a prompt that is not its environment's state
                raise EpisodeEnded(
                    "bad_observation",
                    "reset: differs from the group's first reset of this sample; reset must be deterministic in the "
                    "sample (seed any randomness from it)",
                )
        except EpisodeEnded as ended:
            envs.append(None)
            failed.append(Episode(termination=ended.reason, detail=ended.detail))
            continue
        first = first or observation
        envs.append(env)
        failed.append(Episode())
    # reset is deterministic in the sample: the first observation is the group's shared prompt
    shown = Sample(
        id=sample.id,
        prompt=first.text if first else str(sample.prompt),
        answer=sample.answer,
        task=sample.task,
        images=list(first.images) if first else [],
        meta=dict(sample.meta),
    )
    return encode_one(processor, shown, data_cfg), envs, failed, list(shown.images)


def _group(
    sample: Sample,
    prompt: dict[str, Any],
    episodes: list[Episode],
    mode: str,
    pad_id: int,
    device: torch.device,
    first_images: list[Any] | None = None,
) -> Group:
    width = max(1, max(len(e.completion_ids) for e in episodes))

    def padded(values: list, fill: float) -> list:
        return list(values) + [fill] * (width - len(values))

    # Created on the model's device, where the update meets them (the rows' images travel with the prompt).
    # An episode the environment broke (ENV_FAULTS) is not trained on: its return is unscorable (NaN: out of its
    # group's mean and std, advantage 0) and its tokens leave the loss. Scored 0 instead, it would lift the advantages
    # of its group's other episodes, and under per-step costs a policy would learn to crash the environment.
    faulty = [ep.termination in ENV_FAULTS for ep in episodes]
    ids = torch.tensor([padded(e.completion_ids, pad_id) for e in episodes], dtype=torch.long, device=device)
    mask = torch.tensor(
        [padded([] if bad else e.model_mask, 0) for e, bad in zip(episodes, faulty)], dtype=torch.long, device=device
    )
    logp = torch.tensor([padded(e.sampler_logp, 0.0) for e in episodes], dtype=torch.float32, device=device)
    rows = []
    for ep in episodes:
        n = len(ep.completion_ids)
        types = torch.tensor(padded(ep.type_ids, 0), dtype=torch.long, device=device)
        rows.append(
            {
                "length": n,
                "type_ids": types,
                "pixel_values": torch.cat(ep.pixel_values) if ep.pixel_values else None,
                "image_grid_thw": torch.cat(ep.image_grid_thw) if ep.image_grid_thw else None,
            }
        )
    returns = [math.nan if bad else ep.episode_return(mode) for ep, bad in zip(episodes, faulty)]
    return Group(
        sample=sample,
        prompt=to_device({**prompt, EPISODE_KEY: rows}, device),
        completion_ids=ids,
        completion_mask=mask,
        truncated=torch.tensor([ep.last_truncated for ep in episodes], dtype=torch.bool, device=device),
        texts=["\n".join(ep.texts) for ep in episodes],
        rewards=torch.tensor(returns, dtype=torch.float32, device=device),
        components={
            "episode_return": returns,
            "success": [float(ep.success) for ep in episodes],
            "turns": [float(ep.turns) for ep in episodes],
        },
        sampler_logp=logp,
        episodes=episodes,  # what the samples and the metrics read
        first_images=first_images,
    )


def rollout_episodes(
    cfg: MMRLConfig,
    stage: ResolvedStage,
    samples: list[Sample],
    processor: Any,
    backend: RolloutBackend,
    data_cfg: DataConfig,
    seeds: list[int],
    interface: ModelInterface | None = None,
    greedy: bool = False,
) -> tuple[list[Group], dict[str, Any]]:
    """Play G episodes from each of `samples` (this process's share) and make their groups. `greedy`: one episode per
    start at temperature 0 (evaluation)."""
    if not samples:
        return [], {"counters": {}, "episodes": []}
    limits = _limits(cfg, data_cfg)
    group_size = 1 if greedy else stage.group_size
    starts = [_start(cfg, s, group_size, limits, processor, data_cfg) for s in samples]
    turn_tokens = cfg.env.max_turn_tokens or stage.max_completion_length
    context = context_length(getattr(backend, "model", None)) if getattr(backend, "model", None) is not None else None
    total = min(cfg.env.max_total_tokens, context) if context else cfg.env.max_total_tokens
    rc = cfg.rollout
    params = SamplingParams(
        n=group_size,
        temperature=0.0 if greedy else rc.temperature,
        top_p=rc.top_p,
        top_k=rc.top_k,
        max_new_tokens=turn_tokens,
        min_new_tokens=min(rc.min_new_tokens, turn_tokens),
    )
    playing = [i for i, (_, envs, _, _) in enumerate(starts) if any(e is not None for e in envs)]
    counters: dict[str, Any] = {}
    played: list[list[Episode]] = []
    if playing:
        # Episodes whose environment failed to start take no part; the others of their group play on.
        live_envs = [[e for e in starts[i][1] if e is not None] for i in playing]
        played = run_episodes(
            backend,
            [starts[i][0] for i in playing],
            live_envs,
            params,
            EpisodeLimits(cfg.env.max_turns, turn_tokens, total),
            [seeds[i] for i in playing],
            ObservationTail(processor, data_cfg.chat_template_kwargs),
            whole_turn=interface.whole_turn if interface is not None else (lambda t: t),
            counters=counters,
            first_images=[starts[i][3] for i in playing],
        )
    by_start = dict(zip(playing, played))
    device = backend_device(backend)
    groups, stats = [], []
    for i, (sample, (prompt, envs, failed, first_images)) in enumerate(zip(samples, starts)):
        done = iter(by_start.get(i, []))
        episodes = [next(done) if env is not None else failed[j] for j, env in enumerate(envs)]
        groups.append(_group(sample, prompt, episodes, cfg.env.episode_return, backend.pad_id, device, first_images))
        stats += [episode_stats(ep, cfg.env.episode_return) for ep in episodes]
    return groups, {"counters": counters, "episodes": stats}


def episode_stats(ep: Episode, mode: str) -> dict[str, Any]:
    return {
        "turns": ep.turns,
        "success": float(ep.success),
        "return": ep.episode_return(mode),
        "tokens": sum(ep.model_mask),
        "termination": ep.termination,
    }


def collect_episodes(
    cfg: MMRLConfig,
    stage: ResolvedStage,
    dataset: list[Sample],
    sampler: PromptSampler,
    rank: int,
    world_size: int,
    *,
    processor: Any,
    backend: RolloutBackend,
    data_cfg: DataConfig,
    interface: ModelInterface | None = None,
    **_: Any,
) -> tuple[list[Group], dict[str, Any]]:
    """The step's starts (drawn and sharded as single-turn prompts are), played: same signature as `collect_step`."""
    first = sampler.epoch * sampler.n_items + sampler.position
    indices = shard(sampler.next(cfg.trainer.prompts_per_step), rank, world_size)
    draws = shard(list(range(first, first + cfg.trainer.prompts_per_step)), rank, world_size)
    seeds = [stream_seed(cfg.trainer.seed, stage.index, d) for d in draws]
    return rollout_episodes(cfg, stage, [dataset[i] for i in indices], processor, backend, data_cfg, seeds, interface)


def episode_metrics(stats: list[dict[str, Any]]) -> dict[str, float]:
    """`episode/*` metrics of a step's episodes (every process's): means of turns, success, return and model tokens,
    and the count of each termination reason."""
    if not stats:
        return {}

    def mean(key: str) -> float:
        return sum(float(s[key]) for s in stats) / len(stats)

    reasons = Counter(s["termination"] for s in stats)
    out = {f"episode/{k}": mean(k) for k in ("turns", "success", "return", "tokens")}
    out.update({f"episode/termination/{r}": float(reasons.get(r, 0)) for r in TERMINATIONS})
    return out


def episode_sample_rows(
    groups: list[Group], advantages: list[torch.Tensor], step: int, run_dir: Path
) -> list[dict[str, Any]]:
    """Rows of `samples/step-N.jsonl` for episode groups (`advantages`: each group's [G]), every turn's images saved
    under `samples/images/`."""
    out = run_dir / "samples" / "images"
    rows = []
    for g, (group, group_advantages) in enumerate(zip(groups[:4], advantages)):
        first = []
        for k, image in enumerate(group.first_images or []):
            first.append(out / f"step-{step}-g{g}-prompt-{k}.png")
            first[-1].parent.mkdir(parents=True, exist_ok=True)
            image.save(first[-1])
        for i, ep in enumerate(group.episodes or []):
            paths = []
            for k, image in enumerate(ep.images):
                path = out / f"step-{step}-g{g}-e{i}-{k}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                image.save(path)
                paths.append(str(path))
            rows.append(
                {
                    "id": group.sample.id,
                    "turns": ep.texts,
                    "observations": ep.observations,
                    "rewards": ep.rewards,
                    "return": float(group.rewards[i]),
                    "advantage": float(group_advantages[i]) if group_advantages.numel() else math.nan,
                    "success": ep.success,
                    "termination": ep.termination,
                    "detail": ep.detail,
                    "images": [str(p) for p in first],
                    "observation_images": paths,
                }
            )
    return rows


def evaluate_episodes(
    cfg: MMRLConfig, samples: list[Sample], model: Any, processor: Any, interface: ModelInterface | None = None
) -> dict[str, float]:
    """Greedy episodes from `samples` (one each) against `cfg.env`: the `episode/*` means (success, return, turns)."""
    from mmrl.generation.backends import make_backend
    from mmrl.rl.stages import StageSchedule

    stage = StageSchedule(cfg.stages, cfg).stage_at(0)
    backend = make_backend(model, processor, data_cfg=cfg.data)
    seeds = [stream_seed(cfg.trainer.seed, 0, i) for i in range(len(samples))]
    _, info = rollout_episodes(cfg, stage, samples, processor, backend, cfg.data, seeds, interface, greedy=True)
    return episode_metrics(info["episodes"])
