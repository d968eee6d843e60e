"""Hostile environments: every way an environment can misbehave ends its episode with a named reason (`EpisodeEnded`),
never anything else; and the environment registry / config checks."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from PIL import Image

from mmrl.envs.protocol import Observation
from mmrl.envs.registry import get_environment, kwargs_problem
from mmrl.envs.safe import EpisodeEnded, ObservationLimits, SafeEnvironment, check_observation
from mmrl.errors import ConfigError
from mmrl.preflight import load_config

LIMITS = ObservationLimits(max_text_chars=100, max_images=2, max_image_pixels=300 * 300, max_pixels=112 * 112)


class Scripted:
    """An environment whose reset and step return (or do) whatever the test says."""

    def __init__(self, first=None, then=None):
        self.first, self.then = first, then

    def reset(self, sample):
        return self.first() if callable(self.first) else self.first

    def step(self, action_text):
        return self.then() if callable(self.then) else self.then


def _ended(reason, first="hello", then=None, timeout=2.0):
    env = SafeEnvironment(Scripted, {"first": first, "then": then}, timeout, LIMITS)
    with pytest.raises(EpisodeEnded) as info:
        env.reset(None)
        env.step("an action")
    assert info.value.reason == reason, info.value
    return info.value


def _boom():
    raise RuntimeError("environment bug")


def _hang():
    time.sleep(30)


def test_crash_in_reset_and_step_and_constructor():
    assert "RuntimeError: environment bug" in _ended("env_error", first=_boom).detail
    _ended("env_error", then=_boom)

    def broken(**kwargs):
        raise ValueError("bad kwargs")

    with pytest.raises(EpisodeEnded) as info:
        SafeEnvironment(broken, {}, 1.0, LIMITS)
    assert info.value.reason == "env_error"


def test_hang_ends_the_episode_after_the_timeout():
    start = time.perf_counter()
    error = _ended("env_timeout", then=_hang, timeout=0.3)
    assert time.perf_counter() - start < 5
    assert "step_timeout_s=0.3" in error.detail


@pytest.mark.parametrize(
    "observation",
    [
        42,
        {"text": "x", "image": []},
        {"images": "a.png"},
        {"text": 3},
        "",
        "x" * 101,
        {"text": "x", "images": [Image.new("RGB", (40, 40))] * 3},
    ],
)
def test_malformed_observations(observation):
    _ended("bad_observation", first=observation)


@pytest.mark.parametrize(
    "step",
    [
        ("ok", math.nan, False, {}),
        ("ok", "1", False, {}),
        ("ok", 1.0, 1, {}),
        ("ok", 1.0, False, []),
        ("ok", 1.0),
        None,
        ("ok", True, False, {}),
    ],
)
def test_malformed_step_results(step):
    _ended("bad_observation", then=step)


def test_bad_images(tmp_path):
    not_image = tmp_path / "notes.png"
    not_image.write_text("not a png")
    huge = Image.new("RGB", (400, 400))  # above max_image_pixels=300*300
    for image in (huge, str(not_image), str(tmp_path / "missing.png"), b"\x89PNG", 3.5):
        _ended("bad_image", first={"text": "look", "images": [image]})


def test_a_good_observation_is_resized_like_dataset_images():
    seen = check_observation({"text": "look", "images": [Image.new("RGBA", (280, 280))]}, LIMITS, "reset")
    assert seen.images[0].mode == "RGB" and seen.images[0].size == (112, 112)
    # a finished episode's last observation is never shown: it may be empty
    env = SafeEnvironment(Scripted, {"first": "hi", "then": (None, 1.0, True, None)}, 1.0, LIMITS)
    env.reset(None)
    assert env.step("a") == (None, 1.0, True, {})


def test_registry_and_config_checks(tmp_path):
    assert get_environment("gui_steps").__name__ == "GuiStepsEnv"
    assert "did you mean 'max_actions'" in kwargs_problem("gui_steps", {"max_action": 3})
    user = tmp_path / "my_env.py"
    user.write_text(
        "class Counter:\n    def __init__(self, limit):\n        self.limit = limit\n"
        "    def reset(self, sample):\n        return 'go'\n"
        "    def step(self, text):\n        return 'again', 0.0, False, {}\n"
    )
    assert (
        kwargs_problem(f"{user}:Counter", {})
        == "environment '" + f"{user}:Counter" + "' needs argument(s) limit in env.kwargs"
    )
    cfg = load_config(None, [f"env.name={user}:Counter", "env.kwargs={limit: 3}"])
    assert cfg.env.kwargs == {"limit": 3}
    for overrides, expected in [
        (["env.name=gui_step"], "did you mean 'gui_steps'"),
        (["env.name=gui_steps", "env.kwargs={colour: 1}"], "env.kwargs: environment"),
        ([f"env.name={user}:Missing"], "has no class or function 'Missing'"),
        (["env.name=gui_steps", "env.max_turns=0"], "env.max_turns"),
        (["env.name=gui_steps", "env.max_turn_tokens=2048"], "must be below env.max_total_tokens"),
        (["env.name=gui_steps", "algorithm.online_filter.enabled=true"], "online_filter does not take part"),
        # a built-in's values are checked at load too: it used to load, then every episode ended as env_error
        (["env.name=gui_steps", "env.kwargs={min_actions: 7}"], "env.kwargs: gui_steps: need 2 <= min_actions"),
        (["env.name=zoom_digit", "env.kwargs={frames: 9}"], "env.kwargs: zoom_digit: frames must be"),
        # refused at load, not after the first rollout (gdpo) or silently ignored (rewards)
        (["env.name=gui_steps", "algorithm.advantage=gdpo"], "multi-turn episodes have one return each"),
        (["env.name=gui_steps", "rewards=[{name: format, weight: 1.0}]"], "rewards is not used with env.name"),
        (
            ["env.name=gui_steps", "stages=[{name: a, steps: 2, rewards: [{name: format}]}]"],
            r"stages\[0\].rewards is not used",
        ),
    ]:
        with pytest.raises(ConfigError, match=expected):
            load_config(None, overrides)


class _Unsized:
    def __len__(self):
        raise RuntimeError("no length")


@pytest.mark.parametrize(
    "observation",
    [
        Observation("look", None),  # an Observation built by hand: images must still be a list
        Observation("look", (i for i in ())),
        {"text": "look", "images": _Unsized()},
    ],
)
def test_hand_built_observations_end_the_episode(observation):
    """These raised TypeError out of the checks (a crash of the run, not of one episode)."""
    _ended("bad_observation", first=observation)


@pytest.mark.parametrize(
    "step",
    [
        ("ok", 10**400, False, {}),  # float() overflows
        ("ok", 1.0, True, {"success": np.array([1, 2])}),  # bool() of it raises
        ("ok", 1.0, True, {"success": "yes"}),
    ],
)
def test_step_values_no_check_foresaw_end_the_episode(step):
    _ended("bad_observation", then=step)


def test_numpy_scalars_are_numbers():
    """`reward = np.float32(...)`, `done = x > 3` on numpy values: ordinary results, not malformed ones."""
    env = SafeEnvironment(Scripted, {"first": "hi", "then": ("ok", np.float32(0.5), np.bool_(True), {})}, 1.0, LIMITS)
    env.reset(None)
    assert env.step("a") == (None, 0.5, True, {})
    env = SafeEnvironment(Scripted, {"first": "hi", "then": ("ok", 1, False, {"success": np.bool_(True)})}, 1.0, LIMITS)
    env.reset(None)
    observation, reward, done, info = env.step("a")
    assert (observation.text, reward, done, info) == ("ok", 1.0, False, {"success": True})
