"""The synthetic phone-like screens (title bar with a back arrow, labelled buttons, a text field, a dock of app icons),
drawn with their layout: the single-step GUI builder (`data_pipelines.synthetic.gui`) and the multi-turn `gui_steps`
environment draw the same screens."""

from __future__ import annotations

import random
from typing import Any

from PIL import Image, ImageDraw, ImageFont

BUTTON_LABELS = ("OK", "Save", "Send", "Next", "Menu", "Edit", "Share", "Done", "Cancel", "Login")
WORDS = ("hello", "cats", "pizza", "train", "maps", "music", "news", "rain")
APPS = {"camera": "#d94040", "mail": "#3a6fd8", "clock": "#2f9e44", "notes": "#e0a800"}


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def draw_screen(rng: random.Random, size: int) -> tuple[Image.Image, dict[str, Any]]:
    """A screen and its layout: {buttons: [(label, box)], field: box, apps: [(name, box)], back: box}."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    font = _font()
    bar = max(10, size // 8)
    draw.rectangle([0, 0, size - 1, bar], fill="#303a48")
    back = [2, 2, bar - 2, bar - 2]
    draw.polygon([(back[2], back[1]), (back[0], (back[1] + back[3]) // 2), (back[2], back[3])], fill="white")
    field = [4, bar + 4, size - 5, bar + 4 + bar]
    draw.rectangle(field, outline="#7a7a7a", fill="#f4f4f4")
    labels = rng.sample(BUTTON_LABELS, rng.randint(2, 4))
    buttons, top = [], field[3] + 6
    dock = size - bar - 2
    height = max(8, (dock - top - 4) // len(labels) - 3)
    for label in labels:
        width = rng.randint(size // 2, size - 8)
        x1 = rng.randint(4, size - 4 - width)
        box = [x1, top, x1 + width, top + height]
        draw.rectangle(box, fill=rng.choice(["#4c6ef5", "#12b886", "#fa5252", "#7950f2"]))
        draw.text((x1 + 3, top + max(0, (height - 10) // 2)), label, fill="white", font=font)
        buttons.append((label, box))
        top += height + 3
    apps, slot = [], size // len(APPS)
    for i, (name, color) in enumerate(APPS.items()):
        box = [i * slot + 3, dock, (i + 1) * slot - 4, size - 3]
        draw.ellipse(box, fill=color)
        apps.append((name, box))
    return image, {"buttons": buttons, "field": field, "apps": apps, "back": back}


