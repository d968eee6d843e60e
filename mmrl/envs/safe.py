"""Running one episode's environment so that nothing it does can stop the batch or the run.

Every call (construction, `reset`, `step`) runs in a worker thread with a wall-clock limit (`env.step_timeout_s`);
what it returns is checked. A crash, a hang, an observation of the wrong shape, an image that cannot be used (corrupt,
huge, not an image) each end THAT episode with a counted reason (`EpisodeEnded.reason`), never the group or the step.
A hung call is abandoned (a daemon thread cannot be killed; it holds only its own episode's state).

Reasons an episode ends (the `termination` of its metrics):
    done            the environment said so (success or not: `info["success"]`)
    max_turns       the model took `env.max_turns` turns (an episode that never ends stops here)
    max_tokens      the conversation reached `env.max_total_tokens` (checked before sampling a turn)
    env_error       the environment raised
    env_timeout     a call took longer than `env.step_timeout_s`
    bad_observation an observation, reward, done or info of the wrong type or size
    bad_image       an observation image that cannot be read, or is larger than `data.max_image_pixels`
"""

from __future__ import annotations

import math
import numbers
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image

from mmrl.data.vision import load_image, resize_for_model
from mmrl.envs.protocol import Observation
from mmrl.errors import DataError

TERMINATIONS = ("done", "max_turns", "max_tokens", "env_error", "env_timeout", "bad_observation", "bad_image")
# The environment's fault, not the policy's: such an episode is not trained on (`mmrl.rl.episodes._group`)
ENV_FAULTS = ("env_error", "env_timeout", "bad_observation", "bad_image")


class EpisodeEnded(Exception):
    """The episode cannot go on: `reason` is one of `TERMINATIONS`, `detail` one line for the log."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class ObservationLimits:
    """What an observation may hold; images are resized like dataset images (`data.min_pixels` / `max_pixels`)."""

    max_text_chars: int = 20_000
    max_images: int = 4
    max_image_pixels: int = 4096 * 4096
    min_pixels: int = 28 * 28
    max_pixels: int = 448 * 448


def _call(fn: Callable[..., Any], args: tuple, timeout: float, what: str) -> Any:
    """`fn(*args)` in a worker thread; EpisodeEnded on an exception or after `timeout` seconds."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as err:  # noqa: BLE001 - whatever the environment raises ends its episode only
            box["error"] = err

    worker = threading.Thread(target=run, name="mmrl-env", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise EpisodeEnded("env_timeout", f"{what} took longer than env.step_timeout_s={timeout:g}s")
    if "error" in box:
        err = box["error"]
        first = str(err).splitlines()[0] if str(err) else ""
        raise EpisodeEnded("env_error", f"{what} raised {type(err).__name__}: {first}"[:300])
    return box.get("value")


def check_observation(value: Any, limits: ObservationLimits, what: str) -> Observation:
    """An observation as an `Observation` of RGB images resized for the model, or EpisodeEnded saying why not."""
    if isinstance(value, str):
        value = Observation(text=value)
    elif isinstance(value, dict) and set(value) <= {"text", "images"}:
        images = value.get("images") or ()
        if not isinstance(images, (list, tuple)):
            raise EpisodeEnded("bad_observation", f"{what}: 'images' must be a list (got {type(images).__name__})")
        value = Observation(text=value.get("text") or "", images=tuple(images))
    if not isinstance(value, Observation):
        raise EpisodeEnded(
            "bad_observation",
            f"{what}: expected text, {{'text', 'images'}} or an Observation (got {type(value).__name__})",
        )
    if not isinstance(value.text, str):
        raise EpisodeEnded("bad_observation", f"{what}: text must be a string (got {type(value.text).__name__})")
    if not isinstance(value.images, (list, tuple)):  # an Observation built by hand: images=None, a generator...
        raise EpisodeEnded("bad_observation", f"{what}: 'images' must be a list (got {type(value.images).__name__})")
    if len(value.text) > limits.max_text_chars:
        raise EpisodeEnded(
            "bad_observation", f"{what}: text of {len(value.text)} characters, above {limits.max_text_chars}"
        )
    if len(value.images) > limits.max_images:
        raise EpisodeEnded(
            "bad_observation", f"{what}: {len(value.images)} images, above env.max_images_per_turn={limits.max_images}"
        )
    if not value.text and not value.images:
        raise EpisodeEnded("bad_observation", f"{what}: empty observation (no text, no image)")
    images = []
    for index, src in enumerate(value.images):
        if not isinstance(src, (Image.Image, str)) and not hasattr(src, "__fspath__"):
            raise EpisodeEnded("bad_image", f"{what}: image {index} is a {type(src).__name__}, not a PIL image or path")
        try:
            image = load_image(src, max_image_pixels=limits.max_image_pixels)
        except DataError as err:
            raise EpisodeEnded("bad_image", f"{what}: image {index}: {err}") from None
        images.append(resize_for_model(image, limits.min_pixels, limits.max_pixels))
    return Observation(text=value.text, images=tuple(images))


def _check_step(value: Any, limits: ObservationLimits, turn: int) -> tuple[Observation | None, float, bool, dict]:
    what = f"step {turn}"
    if not isinstance(value, tuple) or len(value) != 4:
        raise EpisodeEnded("bad_observation", f"{what}: step must return (observation, reward, done, info)")
    observation, reward, done, info = value
    # numpy scalars are numbers.Real (float32 is no float); an int too large for a float is not finite
    try:
        finite = isinstance(reward, numbers.Real) and not _is_bool(reward) and math.isfinite(float(reward))
    except (OverflowError, TypeError, ValueError):
        finite = False
    if not finite:
        raise EpisodeEnded("bad_observation", f"{what}: reward must be a finite number (got {reward!r:.60})")
    if not _is_bool(done):
        raise EpisodeEnded("bad_observation", f"{what}: done must be True or False (got {type(done).__name__})")
    done = bool(done)
    if info is None:
        info = {}
    if not isinstance(info, dict):
        raise EpisodeEnded("bad_observation", f"{what}: info must be a dict (got {type(info).__name__})")
    success = info.get("success", False)
    if not (_is_bool(success) or isinstance(success, numbers.Real) and success in (0, 1)):
        raise EpisodeEnded("bad_observation", f"{what}: info['success'] must be True or False (got {success!r:.60})")
    if "success" in info:
        info = {**info, "success": bool(success)}
    # A finished episode's last observation is never shown to the model: it may be empty.
    shown = None if done else check_observation(observation, limits, what)
    return shown, float(reward), done, info


def _is_bool(value: Any) -> bool:
    """A Python or numpy bool (`done = x > 3` on numpy values gives numpy's)."""
    return isinstance(value, bool) or type(value).__name__ == "bool" and type(value).__module__ == "numpy"


def _checked(check: Callable[[], Any], what: str) -> Any:
    """`check()`; whatever else it raises on a value no check foresaw also ends the episode, never the run."""
    try:
        return check()
    except EpisodeEnded:
        raise
    except Exception as err:  # noqa: BLE001 - an odd object (a __len__ or __bool__ that raises...) ends its episode
        raise EpisodeEnded("bad_observation", f"{what}: unusable value: {type(err).__name__}: {err}"[:300]) from None


class SafeEnvironment:
    """One episode's environment behind the time limit and the checks. Raises only `EpisodeEnded`."""

    def __init__(
        self, factory: Callable[..., Any], kwargs: dict[str, Any], timeout: float, limits: ObservationLimits
    ) -> None:
        self.timeout, self.limits = timeout, limits
        self.env = _call(lambda: factory(**kwargs), (), timeout, "creating the environment")
        self.turn = 0

    def reset(self, sample: Any) -> Observation:
        value = _call(self.env.reset, (sample,), self.timeout, "reset")
        return _checked(lambda: check_observation(value, self.limits, "reset"), "reset")

    def step(self, action_text: str) -> tuple[Observation | None, float, bool, dict[str, Any]]:
        self.turn += 1
        value = _call(self.env.step, (action_text,), self.timeout, f"step {self.turn}")
        return _checked(lambda: _check_step(value, self.limits, self.turn), f"step {self.turn}")
