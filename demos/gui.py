"""GUI agent (`mmrl demo gui --model ...`): screenshot + instruction -> the UI-R1 action, its click point drawn on the
screenshot, the action JSON. An optional gold (a box `[x1, y1, x2, y2]`, a point `[x, y]`, or a whole action dict,
in screenshot pixels) is scored with the `gui_action` reward (action type + coordinate + format, 0..3).
"""

from __future__ import annotations

import json
from typing import Any

from PIL import Image

from demos._common import (
    DemoInputError,
    draw_marks,
    image_input,
    image_preview,
    preview_of,
    read_upload,
    sampling_controls,
    shown_errors,
    template_controls,
    to_sampling,
)
from demos._scoring import GoldError, parse_gold
from mmrl.data.boxes import convert_point
from mmrl.rewards import extract_answer, get_reward
from mmrl.rewards.gui import GUI_ACTIONS, gold_box, gold_point, parse_action

PROMPT = ("In this screenshot, the user wants to: {instruction}. Output the one next action inside <answer> </answer> "
          "as [{{'action': ACTION, 'coordinate': [x, y]}}] with ACTION one of " + ", ".join(GUI_ACTIONS) +
          " (coordinate only for click; app_name for open_app, direction for scroll, text for input_text).")


def parse_gui_gold(text: str, image_size: tuple[int, int] | None = None) -> dict[str, Any] | None:
    """The gold as an action dict: `[x1, y1, x2, y2]` -> a click on that box, `[x, y]` -> a click at that point,
    a dict as it is; None when empty. A gold the `gui_action` reward could not score (an unknown action, a click
    without a usable box or point, a target off the `image_size` screenshot) is a `DemoInputError` that says why.

    >>> parse_gui_gold("[10, 20, 30, 40]")
    {'action_type': 'click', 'bbox': [10, 20, 30, 40]}
    >>> parse_gui_gold('{"action_type": "scroll", "direction": "down"}')
    {'action_type': 'scroll', 'direction': 'down'}
    """
    if not (text or "").strip():
        return None
    try:
        value = parse_gold(text, "gui")
    except GoldError:
        value = None
    if isinstance(value, (list, tuple)) and len(value) == 4:
        gold: dict[str, Any] = {"action_type": "click", "bbox": list(value)}
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        gold = {"action_type": "click", "x": value[0], "y": value[1]}
    elif isinstance(value, dict) and (value.get("action_type") or value.get("action")):
        gold = value
    else:
        raise DemoInputError('gold: give a box [x1, y1, x2, y2], a point [x, y], or an action such as '
                             '{"action_type": "scroll", "direction": "down"} (screenshot pixels)')
    _check_gui_gold(gold, image_size)
    return gold


def _check_gui_gold(gold: dict[str, Any], image_size: tuple[int, int] | None) -> None:
    """Raise `DemoInputError` for a gold the reward would not score, or would score 0 whatever the model did."""
    kind = gold.get("action_type") or gold.get("action")
    if not isinstance(kind, str) or kind.strip().lower() not in GUI_ACTIONS:
        raise DemoInputError(f"gold: action {kind!r:.40} is not one of {', '.join(GUI_ACTIONS)}")
    if kind.strip().lower() != "click":
        return
    target = gold.get("bbox") or gold.get("box")
    box = gold_box(target, {"image_size": image_size}) if target is not None else None
    point = gold_point(gold) if target is None else None
    if box is None and point is None:
        raise DemoInputError("gold: a click needs a box [x1, y1, x2, y2] (x2 >= x1, y2 >= y1) or a point [x, y] of "
                             "finite numbers, in screenshot pixels")
    if image_size is None:
        return
    w, h = image_size
    x1, y1, x2, y2 = box if box is not None else (*point, *point)  # type: ignore[misc]
    if x1 >= w or y1 >= h or x2 < 0 or y2 < 0 or (box is None and (x1 < 0 or y1 < 0)):
        raise DemoInputError(f"gold: the click target lies outside the {w}x{h} screenshot; give it in screenshot "
                             "pixels (not 0..1000 or 0..1)")


def gui_view(image: Image.Image, completion: str, frame: str, input_size: tuple[int, int], gold_text: str = "",
             ) -> tuple[Image.Image, dict[str, Any] | None, str]:
    """(screenshot with the click and the gold drawn, enlarged for display; the parsed action; a one-line verdict)
    for one reply."""
    action = parse_action(extract_answer(completion))
    gold = parse_gui_gold(gold_text, image.size)
    sizes = {"image_size": image.size, "input_size": input_size}
    boxes, points = [], []
    click = None
    xy = (action or {}).get("coordinate") or (action or {}).get("point")
    if isinstance(xy, (list, tuple)) and len(xy) == 2:
        try:
            click = convert_point(list(xy), frame, "pixel", **sizes)
            points.append((click, "red", "click"))
        except (TypeError, ValueError):
            click = None
    if gold is not None:
        box = gold_box(gold.get("bbox") or gold.get("box"), {"image_size": image.size})
        if box is not None:
            boxes.append((box, "lime", "gold"))
        elif gold_point(gold) is not None:
            points.append((gold_point(gold), "lime", "gold"))
    if action is None:
        note = "no action in the reply (the model must answer one action dict inside the answer tags)"
    else:
        note = f"action **{action['action']}**" + (f" at ({click[0]:.0f}, {click[1]:.0f}) px" if click else "")
    if gold is not None:
        score = get_reward("gui_action")([completion], answer=[gold], image_size=[image.size], input_size=[input_size],
                                         pred_frame=frame)[0]  # fmt: skip
        note += " · gui_action: " + ("None (this gold cannot be scored)" if score is None else f"**{score:.1f}** / 3")
    return draw_marks(image, boxes, points), action, note


def act(model: Any, image_path: str | None, instruction: str, gold_text: str, sampling: Any,
        system: str | None = None, suffix: str | None = None) -> tuple[str, Image.Image, str, str]:
    """The handler: (verdict, drawing, action JSON, raw reply). `system` / `suffix`: the prompt template (None: the
    model's own)."""
    image = read_upload(image_path, "screenshot")
    if not (instruction or "").strip():
        raise DemoInputError("type an instruction first, e.g. 'open the settings'")
    parse_gui_gold(gold_text, image.size)  # a malformed gold is reported before the model runs
    reply = model.reply(PROMPT.format(instruction=instruction.strip()), image, sampling, system, suffix)
    drawn, action, note = gui_view(image, reply, model.box_frame, model.input_size(image), gold_text)
    return note + getattr(model, "frame_note", ""), drawn, json.dumps(action, indent=1) if action else "null", reply


def build_app(model: Any) -> Any:
    import gradio as gr

    with gr.Blocks(title="mmrl · GUI agent") as app:
        gr.Markdown(f"## GUI agent · `{model.name}`\nUpload a screenshot and say what to do: the model's UI-R1 action "
                    "is shown as JSON and its click drawn in red (the gold in green). Coordinates are read in the "
                    f"model's frame ({model.box_frame}) and drawn in screenshot pixels.")
        with gr.Row():
            with gr.Column():
                image = image_input(gr, "gui-image", "screenshot")
                preview = image_preview(gr, "gui-preview")
                instruction = gr.Textbox(label="instruction", elem_id="gui-instruction")
                gold = gr.Textbox(label="gold (optional): [x1, y1, x2, y2], [x, y] or an action dict, in pixels",
                                  elem_id="gui-gold")
                template = template_controls(gr, "gui", model)
                controls = sampling_controls(gr, "gui")
                button = gr.Button("act", variant="primary", elem_id="gui-act")
            with gr.Column():
                status = gr.Markdown(elem_id="gui-status")
                drawn = gr.Image(label="action", type="pil", interactive=False, elem_id="gui-drawn")
                action = gr.Code(label="action JSON", language="json", elem_id="gui-action")
                raw = gr.Textbox(label="raw reply", lines=3, interactive=False, elem_id="gui-raw")

        @shown_errors(4, 0)
        def run(image_path, instruction_text, gold_text, system, suffix, *sampling_values):
            return act(model, image_path, instruction_text, gold_text, to_sampling(*sampling_values), system, suffix)

        button.click(run, [image, instruction, gold, *template, *controls], [status, drawn, action, raw])
        image.change(shown_errors(2, 0)(preview_of), image, [status, preview])
        _episode_section(gr, model)
    return app


def _episode_section(gr: Any, model: Any) -> None:
    """A multi-turn `gui_steps` episode, one model turn per click (`demos.gui_episode`)."""
    from demos.gui_episode import EpisodeDemo

    episode = EpisodeDemo(model)
    with gr.Accordion("episode (multi-turn): step through a gui_steps task", open=False):
        with gr.Row():
            seed = gr.Number(value=0, precision=0, label="task seed", elem_id="gui-episode-seed")
            start = gr.Button("start", elem_id="gui-episode-start")
            step = gr.Button("step", variant="primary", elem_id="gui-episode-step")
        goal = gr.Markdown(elem_id="gui-episode-goal")
        screen = gr.Image(label="screen", type="pil", interactive=False, elem_id="gui-episode-screen")
        turn = gr.Textbox(label="the model's action", lines=2, interactive=False, elem_id="gui-episode-action")
        status = gr.Markdown(elem_id="gui-episode-status")

        @shown_errors(2, 0)
        def begin(value):
            image, text = episode.start(int(value or 0))
            return text, image

        @shown_errors(3, 2)
        def advance():
            return episode.step()

        start.click(begin, [seed], [goal, screen])
        step.click(advance, [], [screen, turn, status])


__all__ = ["act", "build_app", "gui_view", "parse_gui_gold"]
