"""A multi-turn GUI episode played a step at a time on a model (`mmrl demo gui --model CKPT`, section "episode"):
the `gui_steps` environment (docs/multiturn.md) shows a screen and a goal; each "step" samples the model's next action
in the conversation so far, gives it to the environment and shows the re-rendered screen, the step's reward and how
the episode stands. The conversation is built exactly as in training (`mmrl.generation.multiturn.SteppedEpisode`).
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from demos._common import DemoInputError
from mmrl.data.collate import encode_one
from mmrl.data.sample import Sample
from mmrl.envs.registry import get_environment
from mmrl.envs.safe import EpisodeEnded, ObservationLimits, SafeEnvironment
from mmrl.errors import UserError
from mmrl.generation.conversation import ObservationTail
from mmrl.generation.multiturn import EpisodeLimits, SteppedEpisode, check_episode_model
from mmrl.generation.types import SamplingParams


class EpisodeDemo:
    """One episode at a time against environment `env_name` (`env_kwargs`), greedy unless `temperature` > 0."""

    def __init__(
        self,
        model: Any,
        env_name: str = "gui_steps",
        env_kwargs: dict[str, Any] | None = None,
        max_turns: int = 6,
        max_turn_tokens: int = 64,
        temperature: float = 0.0,
    ) -> None:
        self.model, self.env_name, self.env_kwargs = model, env_name, dict(env_kwargs or {})
        self.limits = EpisodeLimits(max_turns, max_turn_tokens, 4096)
        self.params = SamplingParams(temperature=temperature, max_new_tokens=max_turn_tokens)
        self.stepped: SteppedEpisode | None = None
        self.screen: Image.Image | None = None

    def start(self, seed: int) -> tuple[Image.Image | None, str]:
        """A new episode on task `seed`: (its first screen, the goal)."""
        backend = self.model._backend
        if not hasattr(backend, "rollout"):
            raise DemoInputError("episodes need a local model (a checkpoint or preset), not an HTTP endpoint")
        try:
            check_episode_model(backend.model)
        except UserError as err:
            raise DemoInputError(str(err).removeprefix("env.name: ")) from None
        data_cfg = self.model.trained.data_cfg
        limits = ObservationLimits(
            max_pixels=data_cfg.max_pixels, min_pixels=data_cfg.min_pixels, max_image_pixels=data_cfg.max_image_pixels
        )
        try:
            env = SafeEnvironment(get_environment(self.env_name), self.env_kwargs, 10.0, limits)
            first = env.reset(Sample(id=f"demo-{seed}", prompt="", answer=None, meta={"seed": int(seed)}))
        except EpisodeEnded as ended:
            raise DemoInputError(f"the environment did not start: {ended}") from None
        shown = Sample(id=f"demo-{seed}", prompt=first.text, answer=None, images=list(first.images))
        prompt = encode_one(backend.processor, shown, data_cfg)
        self.stepped = SteppedEpisode(
            backend,
            prompt,
            env,
            ObservationTail(backend.processor, data_cfg.chat_template_kwargs),
            self.params,
            self.limits,
            seed=int(seed),
            whole_turn=self.model.interface.whole_turn,
        )
        self.screen = first.images[0] if first.images else None
        return self.screen, first.text

    def step(self) -> tuple[Image.Image | None, str, str]:
        """One model turn: (the screen now, the model's action, a status line)."""
        if self.stepped is None:
            raise DemoInputError("start an episode first")
        if self.stepped.ended:
            ep = self.stepped.episode
            return (
                self.screen,
                "",
                f"episode over: {ep.termination} · success {ep.success} · return {sum(ep.rewards):g}",
            )
        ep = self.stepped.step()
        if ep.images:
            self.screen = ep.images[-1]
        status = f"turn {ep.turns} · reward {ep.rewards[-1]:g} · return {sum(ep.rewards):g}" if ep.rewards else ""
        if self.stepped.ended:
            status += f" · episode over: {ep.termination}" + (" (success)" if ep.success else "")
        return self.screen, ep.texts[-1] if ep.texts else "", status


__all__ = ["EpisodeDemo"]
