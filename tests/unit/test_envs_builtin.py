"""The built-in environments: `gui_steps` (a 2-4 action goal, the screen re-rendered after each action, UI-R1's rules
per step) and `zoom_digit` (a digit too small at the input size, readable in the zoomed crop); hostile actions score
0 and never raise."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mmrl.data.sample import Sample
from mmrl.envs.gui import GuiStepsEnv
from mmrl.envs.zoom import ZoomDigitEnv
from mmrl.errors import UserError

HOSTILE = [
    "",
    "x" * 100_000,
    "<answer>" * 500,
    "<answer> [{'action': 'click', 'coordinate': [1e309, -1]}] </answer>",
    "<answer> zoom [5, 5, 5, 5] </answer>",
    "\x00\ufffd",
    "<answer> [{'action': 'click'}] </answer>",
]


def _sample(seed):
    return Sample(id=f"s{seed}", prompt="", answer=None, meta={"seed": seed})


def test_gui_goal_takes_its_actions_and_redraws_the_screen():
    lengths = set()
    for seed in range(12):
        env = GuiStepsEnv(min_actions=2, max_actions=4)
        first = env.reset(_sample(seed))
        screens = [np.asarray(first["images"][0])]
        lengths.add(env.length)
        for step in range(env.length):
            observation, reward, done, info = env.step(env.expert_action())
            assert reward == 1.0 and done == (step == env.length - 1) and info["success"] == done
            screens.append(np.asarray(observation["images"][0]))
        # every action but the last visible change (going back keeps the typed screen) re-renders the screen
        assert all((a != b).any() for a, b in zip(screens[:3], screens[1:3]))
    assert lengths == {2, 3, 4}


def test_gui_wrong_actions_do_not_advance_and_hostile_text_scores_zero():
    env = GuiStepsEnv(min_actions=2, max_actions=2)
    env.reset(_sample(1))
    box = env.gold()["bbox"]
    outside = (
        f"<think> t </think><answer> [{{'action': 'click', 'coordinate': [{box[2] + 30}, {box[3] + 30}]}}] </answer>"
    )
    _, reward, done, info = env.step(outside)
    assert (round(reward, 3), done, info["steps_done"]) == (0.667, False, 0)  # action type + format, not the target
    for text in HOSTILE:
        _, reward, done, info = env.step(text)
        assert reward <= 1 / 3 and not done and info["steps_done"] == 0
    # the same seed gives the same task; a fixed layout keeps the screen across seeds
    a, b = GuiStepsEnv(fixed_layout=True), GuiStepsEnv(fixed_layout=True)
    screen_a, screen_b = a.reset(_sample(1))["images"][0], b.reset(_sample(2))["images"][0]
    assert np.array_equal(np.asarray(screen_a), np.asarray(screen_b))
    with pytest.raises(UserError, match="min_actions"):
        GuiStepsEnv(min_actions=1)


def _ink_height(image: Image.Image, box) -> int:
    """Rows of dark pixels (the digit) inside `box` of `image`."""
    pixels = np.asarray(image.convert("L").crop(box))
    return int((pixels < 100).any(axis=1).sum())


def test_zoom_makes_the_digit_readable():
    env = ZoomDigitEnv(image_size=448, input_size=112)
    first = env.reset(_sample(5))
    seen = first["images"][0].resize((112, 112), Image.BICUBIC)  # what the model gets (data.max_pixels=12544)
    inner = [round(v / 4) + 3 for v in env.box[:2]] + [round(v / 4) - 3 for v in env.box[2:]]
    assert _ink_height(seen, inner) <= 3  # a smudge of a few pixels at the input size
    observation, reward, done, _ = env.step(env.expert_action())
    crop = observation["images"][0]
    assert crop.size == (112, 112) and (reward, done) == (0.0, False)
    assert _ink_height(crop, (10, 10, 102, 102)) >= 15  # the digit spans many rows once zoomed
    _, reward, done, info = env.step(f"<think> read </think><answer> {(env.digit + 1) % 10} </answer>")
    assert (reward, done, info["success"]) == (0.0, True, False)


def test_zoom_hostile_actions_never_raise():
    env = ZoomDigitEnv()
    env.reset(_sample(2))
    for text in HOSTILE + [
        "<answer> zoom [-500, -500, 9999, 9999] </answer>",
        "<answer> crop [50, 50, 10, 10] </answer>",
    ]:
        observation, reward, done, _ = env.step(text)
        assert reward == 0.0 and not done
        assert all(im.size == (112, 112) for im in observation.get("images", []))


def test_the_episode_builder_refuses_bad_arguments_in_one_line(tmp_path):
    import subprocess
    import sys

    for args in (["--max-actions", "5"], ["--n", "0"]):
        done = subprocess.run(
            [sys.executable, "-m", "mmrl", "build-data", "gui-episodes", *args, "--out", str(tmp_path / "out")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "error:" in done.stderr
    assert not (tmp_path / "out" / "sft.jsonl").exists()


def test_gui_rules_reward_cannot_be_farmed_by_stalling():
    """With the default step_reward (rules) and episode_return sum, a policy repeating a half-right click (action type
    and format right, target wrong: 2/3 a turn) for 6 turns earned 4.0, twice the 2.0 of finishing the two-action goal.
    Each goal step now pays its best score once: stalling earns 2/3, a miss then a hit earns 1 for that step."""

    def run(actions):
        env = GuiStepsEnv(min_actions=2, max_actions=2)
        env.reset(_sample(1))
        total, done = 0.0, False
        for act in actions:
            if done:
                break
            _, reward, done, _ = env.step(act(env) if callable(act) else act)
            total += reward
        return total, done

    def miss(env):
        box = env.gold()["bbox"]
        return f"<think> t </think><answer> [{{'action': 'click', 'coordinate': [{box[2] + 30}, {box[3] + 30}]}}] </answer>"

    def expert(env):
        return env.expert_action()

    stall, stall_done = run([miss] * 6)
    finish, finish_done = run([expert] * 2)
    retry, retry_done = run([miss, miss, expert, expert])
    assert (round(stall, 3), stall_done) == (0.667, False)
    assert (finish, finish_done) == (2.0, True)
    assert (round(retry, 3), retry_done) == (2.0, True)  # the miss's 2/3, then the hit's remaining 1/3, then 1


def test_zoom_reward_is_paid_once():
    """zoom_reward for every zoom let a policy zoom until max_turns (7 x 0.2 + 1 = 2.4 in 8 turns) and out-earn
    zooming once and answering (1.2)."""
    env = ZoomDigitEnv(zoom_reward=0.2)
    env.reset(_sample(2))
    zoom = env.expert_action()
    rewards = [env.step(zoom)[1] for _ in range(3)]
    assert rewards == [0.2, 0.0, 0.0]
    assert env.step(env.expert_action())[1:3] == (1.0, True)
