"""Synthetic GUI task (UI-R1 action space): rendered phone-like screens with buttons, a text field and app icons, an
instruction, and one gold action that the `gui_action` reward scores.

Each screen has a title bar with a back arrow, two to four labelled buttons, a text field and a dock of app icons.
The instruction asks for one of the UI-R1 actions: `click` (gold box = the button, gold point = its centre),
`input_text` (type a word into the field), `scroll` (up / down), `navigate_back` or `open_app` (an app of the dock).
Records are in mmrl's native format (`task: gui`, `answer` = the action dict), so `mmrl data show` reads them and the
`gui_action` reward scores them with no adapter of its own.

>>> import random
>>> image, record = gui_item(random.Random(0), 112, "click")
>>> record["answer"]["action_type"], len(record["answer"]["bbox"]), record["task"]
('click', 4, 'gui')
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from PIL import Image

from mmrl.envs.screens import APPS, BUTTON_LABELS, WORDS, _font, draw_screen  # noqa: F401
from mmrl.errors import UserError

ACTIONS = ("click", "input_text", "scroll", "navigate_back", "open_app")
SYSTEM = ("Actions: click(coordinate [x, y]), input_text(text), scroll(direction up|down), navigate_back, "
          "open_app(app_name). Answer with one action, e.g. [{'action': 'click', 'coordinate': [x, y]}].")


def _answer_text(action: dict[str, Any]) -> str:
    return str([action])


def gui_item(rng: random.Random, size: int, kind: str) -> tuple[Image.Image, dict[str, Any]]:
    """One screen and its record fields (prompt, answer, task, response, meta) for an action of `kind`."""
    image, layout = draw_screen(rng, size)
    if kind == "click":
        label, box = rng.choice(layout["buttons"])
        point = [(box[0] + box[2]) // 2, (box[1] + box[3]) // 2]
        instruction, gold = f"Tap the '{label}' button.", {"action_type": "click", "bbox": box}
        pred, reason = {"action": "click", "coordinate": point}, f"The {label} button is at {point}."
    elif kind == "input_text":
        word = rng.choice(WORDS)
        instruction, gold = f"Type '{word}' into the text field.", {"action_type": "input_text", "text": word}
        pred, reason = {"action": "input_text", "text": word}, "The text field is focused; I type the word."
        point = None
    elif kind == "scroll":
        direction = rng.choice(["up", "down"])
        instruction = f"Scroll {direction} to see more of the list."
        gold, pred = {"action_type": "scroll", "direction": direction}, {"action": "scroll", "direction": direction}
        reason, point = f"More content is {'below' if direction == 'down' else 'above'}.", None
    elif kind == "navigate_back":
        instruction, gold = "Go back to the previous screen.", {"action_type": "navigate_back"}
        pred, reason, point = {"action": "navigate_back"}, "The back arrow returns to the previous screen.", None
    elif kind == "open_app":
        name, _ = rng.choice(layout["apps"])
        instruction, gold = f"Open the {name} app.", {"action_type": "open_app", "app_name": name}
        pred, reason, point = {"action": "open_app", "app_name": name}, f"The {name} app is in the dock.", None
    else:
        raise UserError(f"unknown GUI action '{kind}'; known actions: {', '.join(ACTIONS)}")
    record = {
        "prompt": f"{instruction}\n{SYSTEM}",
        "answer": gold,
        "task": "gui",
        "response": f"<think> {reason} </think><answer> {_answer_text(pred)} </answer>",
        "meta": {"synthetic_task": "gui", "action": kind, "instruction": instruction, "point": point,
                 "layout": {"buttons": [{"label": lb, "bbox": b} for lb, b in layout["buttons"]],
                            "field": layout["field"], "back": layout["back"],
                            "apps": [{"name": a, "bbox": b} for a, b in layout["apps"]]}},
    }
    return image, record


def build_gui(n: int, seed: int, out_dir: str | Path, image_size: int = 112, split: str = "data",
              actions: tuple[str, ...] = ACTIONS, with_cot: bool = True) -> Path:
    """Write `n` GUI items (actions cycling through `actions`, half of them clicks) to `out_dir/<split>.jsonl`."""
    if n < 1 or image_size < 64:
        raise UserError(f"the gui task needs n >= 1 and image_size >= 64 (got n={n}, image_size={image_size})")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    # Clicks carry the grounding signal, so every other item is one.
    cycle = [a for other in actions if other != "click" for a in ("click", other)] or ["click"]
    lines = []
    for i in range(n):
        kind = cycle[i % len(cycle)] if "click" in actions else actions[i % len(actions)]
        image, record = gui_item(random.Random(f"{seed}:gui:{i}"), image_size, kind)
        name = f"gui-{kind}-{i:06d}" if split == "data" else f"{split}-gui-{kind}-{i:06d}"
        image.save(out / "images" / f"{name}.png", optimize=False)
        if not with_cot:
            del record["response"]
        lines.append(json.dumps({"id": name, "images": [f"images/{name}.png"], **record,
                                 "image_size": list(image.size)}))
    path = out / f"{split}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path
