"""Gradio demos: `mmrl demo NAME` (chat, grounding, gui, rewards, runs). Each module has `build_app(...)`, which
returns a `gradio.Blocks`, and plain handler functions that the app wires up (tested without a browser too).

They use the generation layer (through `demos._model`) and `mmrl.rewards`, never training code.
"""

from __future__ import annotations

import os

# No usage analytics leave the machine: set before any demo imports Gradio (Gradio reads it when a Blocks is made).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

# name -> (module, one-line description); the order is the order `mmrl demo --help` lists them in.
DEMOS: dict[str, tuple[str, str]] = {
    "chat": ("demos.chat", "image + question -> streamed reasoning (collapsible) and answer; optional gold -> rewards"),
    "grounding": ("demos.grounding", "image + referring expression -> predicted box drawn; optional gold box -> IoU"),
    "gui": ("demos.gui", "screenshot + instruction -> UI-R1 action, click point drawn; optional gold -> gui_action"),
    "rewards": ("demos.rewards", "reward playground, no model: completion + gold + task -> every reward and why"),
    "runs": ("demos.runs", "run viewer: metric curves per stage, samples by step with rewards and images"),
}

__all__ = ["DEMOS"]
