"""The GUI demo's episode mode on a real checkpoint: start a `gui_steps` task, step the model through it turn by turn
(the screen re-rendered or kept, the action and the reward shown) until it ends; misuse is one line."""

from __future__ import annotations

import pytest

from demos._common import DemoInputError
from demos._model import DemoModel
from demos.gui_episode import EpisodeDemo


def test_an_episode_steps_turn_by_turn_on_a_checkpoint(tiny_model_dir):
    model = DemoModel.load(str(tiny_model_dir), device="cpu")
    demo = EpisodeDemo(model, env_kwargs={"min_actions": 2, "max_actions": 2}, max_turns=2, max_turn_tokens=8)
    with pytest.raises(DemoInputError, match="start an episode first"):
        demo.step()
    screen, goal = demo.start(3)
    assert goal.startswith("Goal: tap") and screen.size == (112, 112)
    screen, action, status = demo.step()
    assert screen.size == (112, 112) and status.startswith("turn 1 · reward")
    screen, action, status = demo.step()
    assert "turn 2" in status and "episode over: " in status  # max_turns=2 (or the goal reached)
    assert demo.step()[2].startswith("episode over: ")
    assert demo.stepped.episode.turns == 2
    # the same task seed replays the same greedy episode
    first = demo.stepped.episode.texts
    demo.start(3)
    demo.step()
    demo.step()
    assert demo.stepped.episode.texts == first
