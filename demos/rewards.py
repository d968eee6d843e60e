"""Reward playground (`mmrl demo rewards`): completion + gold + task -> every applicable reward's score, the extracted
answer, and the parse behind each score. No model. An optional image gives the image size (boxes and clicks are
scored in its pixels) and shows the predicted and gold boxes / click drawn on it.
"""

from __future__ import annotations

import html
from typing import Any

from demos._common import DemoInputError, draw_marks, image_input, read_upload, shown_errors
from demos._scoring import TASKS, GoldError, parse_gold, parse_size, score_all

EXAMPLES = [
    ["<think>2 apples plus 2 apples</think>\n<answer>4</answer>", "4", "count", "", ""],
    ["<think>half of one</think><answer>\\frac{1}{2}</answer>", "0.5", "math", "", ""],
    ["<think>it is <answer>B</answer></think> so the answer is A", "B", "mc", "a cat\na dog", ""],
    ["<think>the dog is left</think><answer>[10, 10, 60, 60]</answer>", "[12, 8, 64, 58]", "grounding", "", "100x100"],
    ["<think>tap send</think><answer>[{'action': 'click', 'coordinate': [50, 40]}]</answer>",
     '{"action_type": "click", "bbox": [40, 30, 70, 60]}', "gui", "", "100x100"],
]


def score_table(completion: str, gold: str, task: str, choices: str = "", size: str = "",
                image_path: str | None = None) -> tuple[list[list[Any]], str, Any]:
    """The handler: (rows [reward, score, note], the parse as Markdown, the image with marks or None).

    Raises `DemoInputError` for input the rewards cannot take (the page shows the message)."""
    image = read_upload(image_path) if image_path else None
    try:
        image_size = parse_size(size, "image size") or (image.size if image is not None else None)
        choice_list = [c.strip() for c in (choices or "").splitlines() if c.strip()] or None
        rows, parse = score_all(completion or "", gold or "", task, choice_list, image_size=image_size)
    except GoldError as err:
        raise DemoInputError(str(err)) from None
    table = [[r.name, "None" if r.score is None else round(r.score, 4), r.note] for r in rows]
    # Escaped: the rule and the parses quote tags such as <answer>, which Markdown would take for HTML.
    lines = [f"**extracted answer:** `{parse.answer}`" if parse.answer is not None else "**extracted answer:** none",
             f"**rule:** {html.escape(parse.rule)}", *[f"- {html.escape(d)}" for d in parse.details]]
    drawn = _draw(image, parse.answer, gold, task) if image is not None else None
    return table, "\n".join(lines), drawn


def _draw(image, answer: str | None, gold_text: str, task: str):
    """Predicted (red) and gold (green) boxes / points on the image, read in its pixels."""
    from mmrl.rewards.grounding import parse_boxes
    from mmrl.rewards.gui import parse_action

    boxes, points = [], []
    try:
        gold = parse_gold(gold_text, task)
    except GoldError:
        gold = None
    if task == "grounding":
        boxes += [(b, "red", "pred") for b in parse_boxes(answer) if len(b) == 4]
        if isinstance(gold, list) and len(gold) == 4 and not isinstance(gold[0], list):
            boxes.append((gold, "green", "gold"))
    elif task == "gui":
        action = parse_action(answer)
        xy = (action or {}).get("coordinate")
        if isinstance(xy, (list, tuple)) and len(xy) == 2:
            points.append((xy, "red", "pred"))
        if isinstance(gold, dict) and isinstance(gold.get("bbox"), list) and len(gold["bbox"]) == 4:
            boxes.append((gold["bbox"], "green", "gold"))
    return draw_marks(image, boxes, points)


def build_app() -> Any:
    import gradio as gr

    with gr.Blocks(title="mmrl · reward playground") as app:
        gr.Markdown("## Reward playground\nPaste a completion and its gold answer: every reward that applies to the "
                    "task, the answer the rewards extract, and why. Grounding/GUI golds are JSON; the image (optional) "
                    "gives the pixel frame and shows the boxes.")
        with gr.Row():
            with gr.Column():
                completion = gr.Textbox(label="completion", lines=6, elem_id="rewards-completion")
                gold = gr.Textbox(label="gold answer", elem_id="rewards-gold")
                task = gr.Dropdown(list(TASKS), value="math", label="task", elem_id="rewards-task")
                choices = gr.Textbox(label="choices (mc: one per line, A first)", lines=2, elem_id="rewards-choices")
                size = gr.Textbox(label="image size WxH (optional; else the image's)", elem_id="rewards-size")
                image = image_input(gr, "rewards-image", "image (optional)")
                button = gr.Button("score", variant="primary", elem_id="rewards-score")
            with gr.Column():
                status = gr.Markdown(elem_id="rewards-status")
                table = gr.Dataframe(headers=["reward", "score", "note"], label="rewards", interactive=False,
                                     elem_id="rewards-table")
                parse = gr.Markdown(elem_id="rewards-parse")
                drawn = gr.Image(label="boxes (red: predicted, green: gold)", type="pil", interactive=False,
                                 elem_id="rewards-drawn")
        gr.Examples(EXAMPLES, [completion, gold, task, choices, size])

        @shown_errors(4, 0)
        def run(completion_text, gold_text, task_name, choices_text, size_text, image_path):
            rows, parse_md, picture = score_table(completion_text, gold_text, task_name, choices_text, size_text,
                                                  image_path)
            return "", rows, parse_md, picture

        button.click(run, [completion, gold, task, choices, size, image], [status, table, parse, drawn])
    return app


__all__ = ["build_app", "score_table"]
