"""`gui_steps`: a multi-step GUI task over the synthetic screens of `mmrl.envs.screens`.

The goal takes 2 to 4 actions, in this order: tap a button (it opens a menu panel over the screen), tap an item of the
menu (the panel closes and the text field is focused), type a word into the field, go back. After each action the
screen is re-rendered from the episode's state and shown to the model as the next observation. Each step is scored
with UI-R1's action rules (`mmrl.rewards.gui.score_action`: action type, coordinate/argument, format); the step
reward is their mean, the screen moves on only when the action type and its target are right, and the episode
succeeds (`info["success"]`) when the last action of the goal is done.

The task comes from the sample: `sample.meta["seed"]` (else its id) seeds the screen, the goal and its length, so the
G episodes of a group face the same task. Coordinates are screen pixels (the screen is rendered at the model's input
size: keep `image_size` a multiple of 28 within `data.max_pixels`). `fixed_layout=True` draws every episode on the
same screen and menu (only the goal changes): a first curriculum stage for small models, which can then act from the
goal's text before they learn to find buttons on varied screens.

>>> from mmrl.data.sample import Sample
>>> env = GuiStepsEnv(min_actions=2, max_actions=2)
>>> first = env.reset(Sample(id="s", prompt="", answer=None, meta={"seed": 3}))
>>> first["text"].startswith("Goal: tap"), first["images"][0].size
(True, (112, 112))
>>> _, reward, done, info = env.step(env.expert_action())
>>> reward, done, info["success"]
(1.0, False, False)
>>> _, reward, done, info = env.step(env.expert_action())
>>> reward, done, info["success"]
(1.0, True, True)
"""

from __future__ import annotations

import random
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from mmrl.envs.registry import register_environment
from mmrl.envs.screens import WORDS, draw_screen
from mmrl.errors import UserError
from mmrl.rewards.gui import score_action

MENU_ITEMS = ("Copy", "Paste", "Rename", "Delete", "Print", "Pin")
ACTION_HELP = (
    "Answer one action per turn as <think> ... </think><answer> [{'action': 'click', 'coordinate': [x, y]}] "
    "</answer>; actions: click(coordinate), input_text(text), navigate_back."
)


def _answer(action: dict[str, Any]) -> str:
    return f"<think> next step </think><answer> {[action]} </answer>"


@register_environment("gui_steps")
class GuiStepsEnv:
    """One episode of the multi-step GUI task (see the module doc). `step_reward`: "rules" (mean of UI-R1's three
    rules, paid once per goal step: a retry earns only what it adds to that step's best) or "success" (1 for a step
    that advances the task, else 0)."""

    def __init__(
        self,
        image_size: int = 112,
        min_actions: int = 2,
        max_actions: int = 4,
        step_reward: str = "rules",
        show_help: bool = True,
        fixed_layout: bool = False,
    ) -> None:
        if not 2 <= min_actions <= max_actions <= 4:
            raise UserError(f"gui_steps: need 2 <= min_actions <= max_actions <= 4 (got {min_actions}, {max_actions})")
        if image_size < 84:
            raise UserError(f"gui_steps: image_size must be >= 84 (got {image_size})")
        if step_reward not in ("rules", "success"):
            raise UserError(f"gui_steps: step_reward must be 'rules' or 'success' (got {step_reward!r})")
        self.size, self.min_actions, self.max_actions = image_size, min_actions, max_actions
        self.step_reward, self.show_help, self.fixed_layout = step_reward, show_help, fixed_layout

    # -- the task ------------------------------------------------------------------------------------------------
    def reset(self, sample: Any) -> dict[str, Any]:
        seed = (getattr(sample, "meta", None) or {}).get("seed", getattr(sample, "id", 0))
        rng = random.Random(f"gui_steps:{seed}")
        screen = random.Random("gui_steps:fixed") if self.fixed_layout else rng
        self.base, self.layout = draw_screen(screen, self.size)
        self.items = screen.sample(MENU_ITEMS, 3)
        self.button, self.button_box = rng.choice(self.layout["buttons"])
        self.item = rng.choice(self.items)
        self.word = rng.choice(WORDS)
        self.length = rng.randint(self.min_actions, self.max_actions)
        self.done_steps, self.best = 0, 0.0
        parts = [f"tap '{self.button}'", f"choose '{self.item}'", f"type '{self.word}'", "go back"][: self.length]
        goal = "Goal: " + ", then ".join(parts) + "."
        return {"text": goal + (" " + ACTION_HELP if self.show_help else ""), "images": [self.render()]}

    def _menu_boxes(self) -> list[list[int]]:
        s = self.size
        top, height = s // 4, max(12, s // 8)
        return [[s // 6, top + i * height, s - s // 6, top + (i + 1) * height - 2] for i in range(len(self.items))]

    def gold(self) -> dict[str, Any]:
        """The action the goal needs now, as a gold of the `gui_action` reward."""
        if self.done_steps == 0:
            return {"action_type": "click", "bbox": list(self.button_box)}
        if self.done_steps == 1:
            return {"action_type": "click", "bbox": self._menu_boxes()[self.items.index(self.item)]}
        if self.done_steps == 2:
            return {"action_type": "input_text", "text": self.word}
        return {"action_type": "navigate_back"}

    def expert_action(self) -> str:
        """The right answer for the current screen (cold-start data, tests)."""
        gold = self.gold()
        if gold["action_type"] == "click":
            box = gold["bbox"]
            return _answer({"action": "click", "coordinate": [(box[0] + box[2]) // 2, (box[1] + box[3]) // 2]})
        if gold["action_type"] == "input_text":
            return _answer({"action": "input_text", "text": self.word})
        return _answer({"action": "navigate_back"})

    def render(self) -> Image.Image:
        """The screen in the episode's current state."""
        image = self.base.copy()
        draw = ImageDraw.Draw(image)
        font = ImageFont.load_default()
        if self.done_steps == 1:  # the menu panel is open
            for label, box in zip(self.items, self._menu_boxes()):
                draw.rectangle(box, fill="#fff3bf", outline="#495057")
                draw.text((box[0] + 4, box[1] + 1), label, fill="black", font=font)
        if self.done_steps >= 2:  # the field is focused (and holds the word once typed)
            field = self.layout["field"]
            draw.rectangle(field, outline="#1c7ed6", width=2)
            draw.text((4, 1), self.item, fill="white", font=font)
            if self.done_steps >= 3:
                draw.text((field[0] + 4, field[1] + 2), self.word, fill="black", font=font)
        return image

    def step(self, action_text: str) -> tuple[dict[str, Any], float, bool, dict[str, Any]]:
        meta = {"id": "gui_steps", "image_size": (self.size, self.size), "input_size": (self.size, self.size)}
        rules = score_action(action_text, self.gold(), meta, pred_frame="pixel")
        advanced = rules["action"] == 1.0 and rules["coord"] == 1.0
        score = sum(rules.values()) / 3
        # "rules" pays what an action adds to the best score earned on this goal step: the episode's return is the sum
        # of each goal step's best score. Paying every retry its score would let a policy that repeats a half-right
        # action (format + action type: 2/3) until max_turns out-earn one that finishes the goal.
        reward = max(0.0, score - self.best) if self.step_reward == "rules" else float(advanced)
        self.best = max(self.best, score)
        if advanced:
            self.done_steps += 1
            self.best = 0.0
        success = self.done_steps == self.length
        text = "The screen after your action." if advanced else "Nothing changed; try another action."
        return (
            {"text": text, "images": [self.render()]},
            reward,
            success,
            {"success": success, "steps_done": self.done_steps, **{f"rule_{k}": v for k, v in rules.items()}},
        )
