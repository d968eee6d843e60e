"""Multi-turn rollouts: G episodes per start, the model's turns sampled by the HF backend, the environment's
observations (text and images) appended in the model's own chat template.

One step's episodes advance turn by turn together: turn 1 samples G completions of each start's shared prompt in one
backend call (the prompt and its image are prefilled once per group); every later turn re-prefills each live
episode's whole conversation (its images included, so M-RoPE positions come from the model's own `get_rope_index`
over the full sequence) and samples one completion, all live episodes of the step in one batched call. The sampled
tokens are kept as they are; the tokens between turns come from `ObservationTail`. An episode ends when its
environment says done, after `max_turns` model turns, when the next turn could pass `max_total_tokens` (checked before
sampling), or when its environment fails (`mmrl.envs.safe`): each with its `termination` reason.

An `Episode` is what training needs: `completion_ids` (every token after the shared prompt), `model_mask` (1 on the
model's tokens: the loss covers only them), the sampler's log-probs, and per tail its pixel values / grid / token types.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mmrl.envs.safe import EpisodeEnded, SafeEnvironment
from mmrl.errors import UserError
from mmrl.generation.conversation import ObservationTail, template_tokens_in
from mmrl.generation.types import SamplingParams
from mmrl.models.prefix import strip_padding, supports_prefix_sharing, unwrap


def check_episode_model(model: Any) -> None:
    """Multi-turn episodes run on the M-RoPE families (Qwen2-VL, Qwen2.5-VL, Qwen3-VL), whose image inputs (pixel rows
    and a grid per image) concatenate across turns; anything else is refused in one line before a step."""
    if not supports_prefix_sharing(model):
        kind = getattr(getattr(unwrap(model), "config", None), "model_type", type(model).__name__)
        raise UserError(
            f"env.name: multi-turn episodes run on Qwen2-VL, Qwen2.5-VL and Qwen3-VL models; this model is "
            f"'{kind}'; use one of those families or remove env.name"
        )


@dataclass
class Episode:
    """One episode after the shared prompt. Lists are per token of `completion_ids` unless said otherwise."""

    completion_ids: list[int] = field(default_factory=list)
    model_mask: list[int] = field(default_factory=list)  # 1: sampled by the model; 0: written by the template/env
    sampler_logp: list[float] = field(default_factory=list)
    type_ids: list[int] = field(default_factory=list)  # mm_token_type_ids of these tokens (image tokens: 1)
    pixel_values: list[torch.Tensor] = field(default_factory=list)  # of the observation images, in order
    image_grid_thw: list[torch.Tensor] = field(default_factory=list)
    images: list[Any] = field(default_factory=list)  # the observation images (PIL), for the saved samples
    texts: list[str] = field(default_factory=list)  # the model's turns
    observations: list[str] = field(default_factory=list)  # the environment's texts after each turn
    rewards: list[float] = field(default_factory=list)  # per model turn
    success: bool = False
    termination: str = ""
    detail: str = ""
    last_truncated: bool = False  # the last model turn hit the per-turn token limit

    @property
    def turns(self) -> int:
        return len(self.texts)

    def episode_return(self, mode: str = "sum") -> float:
        if not self.rewards:
            return 0.0
        return {"sum": sum, "last": lambda r: r[-1], "max": max}[mode](self.rewards)


@dataclass(frozen=True)
class EpisodeLimits:
    max_turns: int
    max_turn_tokens: int
    max_total_tokens: int


def turn_seed(seed: int, episode: int, turn: int) -> int:
    """The sampling stream of one episode's turn (> 1): depends on its group's seed only, not on the batch."""
    digest = hashlib.sha256(f"mmrl-turn:{seed}:{episode}:{turn}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 2


@dataclass
class _Live:
    group: int
    index: int  # episode within its group
    env: SafeEnvironment
    episode: Episode
    tokens: int  # conversation length so far
    pending: Any = None  # the observation the next turn answers


def _full_input(prompt: dict[str, Any], ep: Episode) -> dict[str, Any]:
    """The whole conversation so far as one encoded prompt (batch dim 1)."""
    ids = torch.tensor([ep.completion_ids], dtype=torch.long, device="cpu")  # a processor output: the backend moves it
    out = {"input_ids": torch.cat([prompt["input_ids"].cpu(), ids], dim=1)}
    out["attention_mask"] = torch.ones_like(out["input_ids"])
    types = prompt.get("mm_token_type_ids")
    if types is not None:
        out["mm_token_type_ids"] = torch.cat(
            [types.cpu(), torch.tensor([ep.type_ids], dtype=types.dtype, device="cpu")], dim=1
        )
    pixels = ([prompt["pixel_values"].cpu()] if prompt.get("pixel_values") is not None else []) + ep.pixel_values
    grids = ([prompt["image_grid_thw"].cpu()] if prompt.get("image_grid_thw") is not None else []) + ep.image_grid_thw
    if pixels:
        out["pixel_values"], out["image_grid_thw"] = torch.cat(pixels), torch.cat(grids)
    return out


def vllm_input(prompt: dict[str, Any], ep: Episode, first_images: Sequence[Any]) -> dict[str, Any]:
    """The vLLM backend's input for an episode's next turn: the conversation's token ids as they are (the image
    placeholders already expanded, which vLLM's multimodal processor recognises) and every image so far, in order."""
    ids = prompt["input_ids"][0].tolist() + list(ep.completion_ids)
    images = list(first_images) + list(ep.images)
    return {"prompt_token_ids": ids, **({"multi_modal_data": {"image": images}} if images else {})}


def _add_turn(live: _Live, ids: list[int], logp: list[float], text: str, truncated: bool) -> None:
    ep = live.episode
    ep.completion_ids += ids
    ep.model_mask += [1] * len(ids)
    ep.sampler_logp += logp
    ep.type_ids += [0] * len(ids)
    ep.texts.append(text)
    ep.last_truncated = truncated
    live.tokens += len(ids)


def _add_tail(live: _Live, tail: dict[str, torch.Tensor], images: Sequence[Any]) -> None:
    ep = live.episode
    ids = tail["input_ids"][0].tolist()
    types = next((tail[k] for k in ("mm_token_type_ids", "token_type_ids") if k in tail), None)
    ep.completion_ids += ids
    ep.model_mask += [0] * len(ids)
    ep.sampler_logp += [0.0] * len(ids)
    ep.type_ids += types[0].tolist() if types is not None else [0] * len(ids)
    if tail.get("pixel_values") is not None:
        ep.pixel_values.append(tail["pixel_values"])
        ep.image_grid_thw.append(tail["image_grid_thw"])
    ep.images += list(images)
    live.tokens += len(ids)


def _end(live: _Live, reason: str, detail: str = "") -> None:
    live.episode.termination, live.episode.detail = reason, detail


def run_episodes(
    backend: Any,
    prompts: Sequence[dict[str, Any]],
    envs: Sequence[Sequence[SafeEnvironment]],
    params: SamplingParams,
    limits: EpisodeLimits,
    seeds: Sequence[int],
    tail: ObservationTail,
    whole_turn: Callable[[str], str] = lambda text: text,
    counters: dict[str, Any] | None = None,
    first_images: Sequence[Sequence[Any]] | None = None,
) -> list[list[Episode]]:
    """Episodes of every start: `prompts[i]` (its first observation, encoded) and `envs[i]` (its G environments,
    already reset) -> G episodes each. `params.n` is ignored (one completion per episode per turn); `seeds[i]` is start
    i's sampling seed. `whole_turn` maps a sampled text to the model's whole turn (what the environment reads).
    `first_images[i]`: start i's first images, which a backend that encodes its inputs itself (vLLM,
    `takes_samples`) receives with the token ids (`vllm_input`)."""
    counters = counters if counters is not None else {}
    prompts = [strip_padding(p) for p in prompts]
    episodes = [[Episode() for _ in group] for group in envs]
    live = [
        _Live(i, j, env, episodes[i][j], int(prompts[i]["input_ids"].shape[1]))
        for i, group in enumerate(envs)
        for j, env in enumerate(group)
    ]
    end_text = {t: backend.tokenizer.decode([t]) for t in backend.end_ids}
    own_inputs = getattr(backend, "takes_samples", False)
    firsts = first_images if first_images is not None else [[] for _ in prompts]

    def turn_input(i: int, ep: Episode) -> Any:
        return vllm_input(prompts[i], ep, firsts[i]) if own_inputs else _full_input(prompts[i], ep)

    for turn in range(1, limits.max_turns + 1):
        ready = []
        for one in live:
            if one.tokens + limits.max_turn_tokens > limits.max_total_tokens:
                _end(
                    one,
                    "max_tokens",
                    f"{one.tokens} tokens + max_turn_tokens {limits.max_turn_tokens} > {limits.max_total_tokens}",
                )
            else:
                ready.append(one)
        live = ready
        if not live:
            break
        turn_params = SamplingParams(
            n=1,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k,
            max_new_tokens=limits.max_turn_tokens,
            min_new_tokens=params.min_new_tokens,
            stop=params.stop,
            stop_token_ids=params.stop_token_ids,
            logprobs=True,
        )
        if turn == 1:  # the group's shared prompt: prefilled once, G branches
            starts = sorted({one.group for one in live})
            # a start whose environments partly failed to start samples G branches too; its extra rows go unused
            n = max(len(envs[i]) for i in starts)
            group_params = SamplingParams(**{**turn_params.__dict__, "n": n})
            batch = backend.rollout(
                [turn_input(i, Episode()) if own_inputs else prompts[i] for i in starts],
                group_params,
                prompt_seeds=[seeds[i] for i in starts],
            )
            row_of = {(i, j): k * n + j for k, i in enumerate(starts) for j in range(len(envs[i]))}
            rows = [row_of[(one.group, one.index)] for one in live]
        else:
            batch = backend.rollout(
                [turn_input(one.group, one.episode) for one in live],
                turn_params,
                prompt_seeds=[turn_seed(seeds[one.group], one.index, turn) for one in live],
            )
            rows = list(range(len(live)))
        for key in ("prefill_tokens", "generated_tokens"):
            counters[key] = counters.get(key, 0) + int(batch.counters.get(key, 0))
        still = []
        for one, row in zip(live, rows):
            if _after_turn(one, batch, row, turn, limits, tail, end_text, whole_turn):
                still.append(one)
        live = still
    for one in live:
        _end(one, "max_turns", f"{limits.max_turns} turns")
    return episodes


def _after_turn(
    one: _Live,
    batch: Any,
    row: int,
    turn: int,
    limits: EpisodeLimits,
    tail: ObservationTail,
    end_text: dict[int, str],
    whole_turn: Callable[[str], str],
) -> bool:
    """Record row `row` of `batch` as the episode's model turn, give it to the environment and append the
    environment's answer; True when the episode goes on."""
    mask = batch.completion_mask[row].bool()
    ids = batch.completion_ids[row][mask].tolist()
    logp = batch.logprobs[row][mask].tolist() if batch.logprobs is not None else [0.0] * len(ids)
    truncated = bool(batch.truncated[row])
    _add_turn(one, ids, logp, batch.texts[row], truncated)
    if _step(one, whole_turn(batch.texts[row]), turn, limits):
        return False
    ended = None if truncated or not ids else end_text.get(ids[-1])
    injected = template_tokens_in(tail.tokenizer, one.pending.text)
    if injected:
        _end(
            one, "bad_observation", f"step {turn}: the observation's text holds the chat template's token(s) {injected}"
        )
        return False
    try:
        encoded = tail.encode(list(one.pending.images), one.pending.text, ended)
    except Exception as err:  # noqa: BLE001 - an observation the processor cannot take ends its episode
        _end(one, "bad_observation", f"the processor refused the observation: {err}"[:300])
        return False
    _add_tail(one, encoded, one.pending.images)
    return True


class SteppedEpisode:
    """One episode played a turn at a time (`mmrl demo gui`'s episode mode): `step()` samples the model's next turn,
    gives it to the environment and appends its answer. `episode.termination` is set once it ended.

    >>> stepped = SteppedEpisode(backend, prompt, env, tail, SamplingParams(temperature=0), limits)  # doctest: +SKIP
    >>> stepped.step().texts[-1]  # doctest: +SKIP
    "<think> next step </think><answer> [{'action': 'click', 'coordinate': [40, 52]}] </answer>"
    """

    def __init__(
        self,
        backend: Any,
        prompt: dict[str, Any],
        env: SafeEnvironment,
        tail: ObservationTail,
        params: SamplingParams,
        limits: EpisodeLimits,
        seed: int = 0,
        whole_turn: Callable[[str], str] = lambda text: text,
    ) -> None:
        self.backend, self.prompt, self.tail, self.limits, self.seed = (
            backend,
            strip_padding(prompt),
            tail,
            limits,
            seed,
        )
        self.params = SamplingParams(
            n=1,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k,
            max_new_tokens=limits.max_turn_tokens,
            logprobs=True,
        )
        self.whole_turn = whole_turn
        self.episode = Episode()
        self._live = _Live(0, 0, env, self.episode, int(self.prompt["input_ids"].shape[1]))
        self._end_text = {t: backend.tokenizer.decode([t]) for t in backend.end_ids}

    @property
    def ended(self) -> bool:
        return bool(self.episode.termination)

    def step(self) -> Episode:
        if self.ended:
            return self.episode
        turn = self.episode.turns + 1
        if self._live.tokens + self.limits.max_turn_tokens > self.limits.max_total_tokens:
            _end(self._live, "max_tokens", f"{self._live.tokens} tokens")
            return self.episode
        source = self.prompt if turn == 1 else _full_input(self.prompt, self.episode)
        batch = self.backend.rollout([source], self.params, prompt_seeds=[turn_seed(self.seed, 0, turn)])
        _after_turn(self._live, batch, 0, turn, self.limits, self.tail, self._end_text, self.whole_turn)
        return self.episode


def _step(one: _Live, text: str, turn: int, limits: EpisodeLimits) -> bool:
    """Give the environment the model's turn; True when the episode ended here."""
    ep = one.episode
    try:
        observation, reward, done, info = one.env.step(text)
    except EpisodeEnded as ended:
        ep.rewards.append(0.0)
        _end(one, ended.reason, ended.detail)
        return True
    ep.rewards.append(reward)
    ep.success = bool(info.get("success", False))
    ep.observations.append(observation.text if observation is not None else "")
    if done:
        _end(one, "done")
        return True
    if turn >= limits.max_turns:
        _end(one, "max_turns", f"{limits.max_turns} turns")
        return True
    one.pending = observation
    return False
