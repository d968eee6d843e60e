"""`zoom_digit`: "thinking with images" — a digit too small to read at the model's input size, readable after a zoom.

The screen (`image_size` pixels, rendered large) shows a few coloured frames; a tiny digit sits in the frame of the
colour the question names. The model sees the screen resized to `input_size` (its input resolution), where the digit
is a smudge of a pixel or two. It may answer `<answer> zoom [x1, y1, x2, y2] </answer>` (coordinates in the image it
sees, `input_size` pixels; `crop` is the same tool): the environment crops that region of the full-resolution screen
and returns it as a new image, resized to `input_size`, where the digit is readable. An answer that is a digit ends the
episode: reward 1 and success when it is the digit. The first zoom earns `zoom_reward` (default 0; once, so zooming
again and again until max_turns never out-earns answering), any other answer 0.

>>> from mmrl.data.sample import Sample
>>> env = ZoomDigitEnv()
>>> first = env.reset(Sample(id="s", prompt="", answer=None, meta={"seed": 1}))
>>> first["images"][0].size, "zoom" in first["text"]
((448, 448), True)
>>> obs, reward, done, _ = env.step(env.expert_action())
>>> obs["images"][0].size, done
((112, 112), False)
>>> env.step(env.expert_action())[1:3]
(1.0, True)
"""

from __future__ import annotations

import random
import re
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from mmrl.envs.registry import register_environment
from mmrl.errors import UserError
from mmrl.rewards.extraction import extract_answer

COLOURS = {"red": "#e03131", "blue": "#1971c2", "green": "#2f9e44", "orange": "#f08c00"}
_TOOL = re.compile(
    r"^\s*(?:zoom|crop)\s*\(?\s*\[?\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)"
    r"\s*,\s*(-?\d+(?:\.\d+)?)\s*\]?\s*\)?\s*$",
    re.IGNORECASE,
)


@register_environment("zoom_digit")
class ZoomDigitEnv:
    """One episode of the zoom task (see the module doc)."""

    def __init__(
        self,
        image_size: int = 448,
        input_size: int = 112,
        frames: int = 2,
        zoom_reward: float = 0.0,
        show_help: bool = True,
    ) -> None:
        if image_size < 2 * input_size or input_size < 56:
            raise UserError(
                f"zoom_digit: need input_size >= 56 and image_size >= 2 x input_size (got {image_size}, {input_size})"
            )
        if not 1 <= frames <= len(COLOURS):
            raise UserError(f"zoom_digit: frames must be 1..{len(COLOURS)} (got {frames})")
        self.size, self.input_size, self.frames = image_size, input_size, frames
        self.zoom_reward, self.show_help = float(zoom_reward), show_help

    def reset(self, sample: Any) -> dict[str, Any]:
        seed = (getattr(sample, "meta", None) or {}).get("seed", getattr(sample, "id", 0))
        rng = random.Random(f"zoom_digit:{seed}")
        self.screen = Image.new("RGB", (self.size, self.size), "white")
        draw = ImageDraw.Draw(self.screen)
        side = self.size // 8
        cells = rng.sample([(x, y) for x in range(1, 7, 2) for y in range(1, 7, 2)], self.frames)
        names = rng.sample(list(COLOURS), self.frames)
        self.digit = rng.randint(0, 9)
        self.target = names[0]
        font = ImageFont.load_default()
        for name, (cx, cy) in zip(names, cells):
            box = [cx * side, cy * side, cx * side + side, cy * side + side]
            draw.rectangle(box, outline=COLOURS[name], width=max(2, side // 12))
            digit = self.digit if name == self.target else rng.randint(0, 9)
            draw.text((box[0] + side // 2 - 3, box[1] + side // 2 - 6), str(digit), fill="black", font=font)
            if name == self.target:
                self.box = box
        text = f"Which digit is inside the {self.target} frame?"
        if self.show_help:
            text += (
                " Answer <answer> zoom [x1, y1, x2, y2] </answer> to see a region up close, or "
                "<answer> d </answer> with the digit."
            )
        return {"text": text, "images": [self.screen]}

    def expert_action(self) -> str:
        """Zoom on the target frame while no zoom was made, then the digit."""
        if not getattr(self, "zoomed", False):
            scale = self.input_size / self.size
            x1, y1, x2, y2 = (round(v * scale) for v in self.box)
            return f"<think> zoom in </think><answer> zoom [{x1}, {y1}, {x2}, {y2}] </answer>"
        return f"<think> I read it </think><answer> {self.digit} </answer>"

    def step(self, action_text: str) -> tuple[dict[str, Any], float, bool, dict[str, Any]]:
        answer = (extract_answer(action_text) or "").strip()
        tool = _TOOL.match(answer)
        if tool:
            scale = self.size / self.input_size
            x1, y1, x2, y2 = (float(v) * scale for v in tool.groups())
            x1, x2 = sorted((max(0.0, min(x1, self.size)), max(0.0, min(x2, self.size))))
            y1, y2 = sorted((max(0.0, min(y1, self.size)), max(0.0, min(y2, self.size))))
            if x2 - x1 < 4 or y2 - y1 < 4:
                return {"text": "That region is empty; give x1 < x2 and y1 < y2."}, 0.0, False, {"success": False}
            reward = 0.0 if getattr(self, "zoomed", False) else self.zoom_reward
            self.zoomed = True
            crop = self.screen.crop((round(x1), round(y1), round(x2), round(y2)))
            crop = crop.resize((self.input_size, self.input_size), Image.BICUBIC)
            return {"text": "Zoomed region.", "images": [crop]}, reward, False, {"success": False}
        if re.fullmatch(r"\d", answer):
            right = int(answer) == self.digit
            return {"text": ""}, float(right), True, {"success": right}
        return {"text": "Answer zoom [x1, y1, x2, y2] or one digit."}, 0.0, False, {"success": False}
