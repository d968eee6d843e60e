"""The environment protocol of multi-turn RL: `reset(sample) -> observation`, `step(action_text) -> (observation,
reward, done, info)`.

An observation is text and/or images: an `Observation`, a plain string (text only) or a dict with `text` and/or
`images` (PIL images or paths). One environment instance serves one episode: the rollout builds a fresh one (from the
config's `env.name` and `env.kwargs`) for each of the G episodes of a group, so an instance may keep any state it likes.
`reset` must be deterministic in the sample: the G episodes of a group share their first prompt.

>>> class Echo:
...     def reset(self, sample):
...         return "Say hi."
...     def step(self, action_text):
...         return "", float("hi" in action_text), True, {"success": "hi" in action_text}
>>> env = Echo(); env.reset(None)
'Say hi.'
>>> env.step("hi there")
('', 1.0, True, {'success': True})
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Observation:
    """What the environment shows the model: `text` and the `images` placed before it in the user turn."""

    text: str = ""
    images: tuple[Any, ...] = field(default_factory=tuple)


@runtime_checkable
class Environment(Protocol):
    """One episode's environment. `info` may hold `success` (bool: the episode reached its goal) and anything else
    worth logging; `reward` is this step's reward (a finite number)."""

    def reset(self, sample: Any) -> Any: ...

    def step(self, action_text: str) -> tuple[Any, float, bool, dict[str, Any]]: ...
