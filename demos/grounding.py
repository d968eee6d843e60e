"""Grounding (`mmrl demo grounding --model ...`): image + referring expression -> the predicted box(es) drawn over
the image. Boxes are read in the frame the model writes (Qwen2-VL: 0..1000 of the image; Qwen2.5-VL and later: pixels
of the resized model input; or plain image pixels) and mapped to the image's pixels with `mmrl.data.boxes`. An
optional gold box (image pixels) is drawn too, with the IoU from the `iou` reward.
"""

from __future__ import annotations

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
from mmrl.data.boxes import box_iou, convert_box
from mmrl.rewards import extract_answer, get_reward
from mmrl.rewards.grounding import gold_box, parse_boxes, valid_box

FRAMES = {
    "auto (the model's own)": "auto",
    "Qwen2.5-VL / Qwen3-VL: model-input pixels": "input_pixel",
    "Qwen2-VL: 0..1000 of the image": "norm1000",
    "image pixels": "pixel",
    "0..1 of the image": "norm1",
}
PROMPT = ("Locate {expression} in the image. Output its bounding box as [x1, y1, x2, y2] inside <answer> </answer>.")


def predicted_boxes(completion: str, frame: str, image_size: tuple[int, int], input_size: tuple[int, int],
                    ) -> list[list[float]]:
    """Every valid box in the completion's answer (the whole reply when it has no answer tags), in image pixels.

    >>> predicted_boxes("<answer>[0, 0, 500, 500]</answer>", "norm1000", (200, 100), (224, 112))
    [[0.0, 0.0, 100.0, 50.0]]
    >>> predicted_boxes("<answer>[0, 0, 112, 56]</answer>", "input_pixel", (200, 100), (224, 112))
    [[0.0, 0.0, 100.0, 50.0]]
    """
    text = extract_answer(completion)
    boxes = [b for b in parse_boxes(text if text is not None else completion) if valid_box(b)]
    sizes = {"image_size": image_size, "input_size": input_size}
    return [convert_box(b, frame, "pixel", **sizes) for b in boxes]


def parse_gold_box(text: str, image_size: tuple[int, int]) -> list[float] | None:
    """A gold box typed as `[x1, y1, x2, y2]` in image pixels; None when empty; a message when malformed."""
    if not (text or "").strip():
        return None
    box = gold_box(text, {"image_size": image_size})
    if box is None:
        raise DemoInputError(f"gold box: give [x1, y1, x2, y2] in image pixels with x2 >= x1, y2 >= y1 (got {text!r:.60})")
    # A box with no area or wholly off the picture scores IoU 0 against any prediction: a typo or a box in another
    # frame (0..1000, 0..1), which the user should hear about instead of reading a 0.
    if box[2] == box[0] or box[3] == box[1]:
        raise DemoInputError(f"gold box: {_fmt(box)} has no area; give x2 > x1 and y2 > y1 in image pixels")
    w, h = image_size
    if box[0] >= w or box[1] >= h or box[2] <= 0 or box[3] <= 0:
        raise DemoInputError(f"gold box: {_fmt(box)} lies outside the {w}x{h} image; give it in image pixels "
                             "(not 0..1000 or 0..1)")
    return box


def _fmt(box: list[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"


def grounding_view(image: Image.Image, completion: str, frame: str, input_size: tuple[int, int], gold_text: str = "",
                   ) -> tuple[Image.Image, list[list[float]], str]:
    """(image with the boxes drawn, enlarged for display; predicted boxes in image pixels; IoU line) for one reply."""
    boxes = predicted_boxes(completion, frame, image.size, input_size)
    gold = parse_gold_box(gold_text, image.size)
    marks = [(b, "red", f"pred {i + 1}" if len(boxes) > 1 else "pred") for i, b in enumerate(boxes)]
    if gold is not None:
        marks.append((gold, "lime", "gold"))
    if not boxes:
        note = "no box in the reply (the model must answer [x1, y1, x2, y2])"
    else:
        note = f"{len(boxes)} box(es), read in the **{frame}** frame, drawn in image pixels"
        w, h = image.size
        outside = [i + 1 for i, b in enumerate(boxes) if b[0] >= w or b[1] >= h or b[2] <= 0 or b[3] <= 0]
        if outside:  # clipped to the border by the drawing: say so, or the page seems to show nothing
            note += f" · box {', '.join(map(str, outside))} lies outside the image (drawn clipped to its edge)"
    if gold is not None:
        score = get_reward("iou")([completion], answer=[gold], image_size=[image.size], input_size=[input_size],
                                  pred_frame=frame)[0]  # fmt: skip
        best = max((box_iou(b, gold) for b in boxes), default=0.0)
        note += f" · **IoU (iou reward): {score:.3f}**" + (f" · best box IoU {best:.3f}" if len(boxes) > 1 else "")
    return draw_marks(image, marks), boxes, note


def locate(model: Any, image_path: str | None, expression: str, frame_label: str, gold_text: str, sampling: Any,
           system: str | None = None, suffix: str | None = None) -> tuple[str, Image.Image, str, list]:
    """The handler: (status, drawing, raw reply, boxes in image pixels). `system` / `suffix`: the prompt template
    (None: the model's own)."""
    image = read_upload(image_path)
    if not (expression or "").strip():
        raise DemoInputError("type what to find, e.g. 'the red car on the left'")
    frame = FRAMES.get(frame_label, frame_label)
    assumed = getattr(model, "frame_note", "") if frame == "auto" else ""
    frame = model.box_frame if frame == "auto" else frame
    parse_gold_box(gold_text, image.size)  # a malformed gold is reported before the model runs
    reply = model.reply(PROMPT.format(expression=expression.strip()), image, sampling, system, suffix)
    drawn, boxes, note = grounding_view(image, reply, frame, model.input_size(image), gold_text)
    return note + assumed, drawn, reply, [[round(v, 1) for v in b] for b in boxes]


def build_app(model: Any, frame: str = "auto") -> Any:
    import gradio as gr

    default = next((label for label, value in FRAMES.items() if value == frame), next(iter(FRAMES)))
    with gr.Blocks(title="mmrl · grounding") as app:
        gr.Markdown(f"## Grounding · `{model.name}`\nUpload an image and describe an object: the predicted box is "
                    "drawn in red (gold in green). Pick the frame the model writes its boxes in.")
        with gr.Row():
            with gr.Column():
                image = image_input(gr, "grounding-image")
                preview = image_preview(gr, "grounding-preview")
                expression = gr.Textbox(label="referring expression", elem_id="grounding-expression")
                frame_box = gr.Dropdown(list(FRAMES), value=default, label="box frame", elem_id="grounding-frame")
                gold = gr.Textbox(label="gold box [x1, y1, x2, y2] in image pixels (optional)", elem_id="grounding-gold")
                template = template_controls(gr, "grounding", model)
                controls = sampling_controls(gr, "grounding")
                button = gr.Button("locate", variant="primary", elem_id="grounding-locate")
            with gr.Column():
                status = gr.Markdown(elem_id="grounding-status")
                drawn = gr.Image(label="prediction", type="pil", interactive=False, elem_id="grounding-drawn")
                boxes = gr.JSON(label="boxes (image pixels)", elem_id="grounding-boxes")
                raw = gr.Textbox(label="raw reply", lines=3, interactive=False, elem_id="grounding-raw")

        @shown_errors(4, 0)
        def run(image_path, expression_text, frame_label, gold_text, system, suffix, *sampling_values):
            note, picture, reply, found = locate(model, image_path, expression_text, frame_label, gold_text,
                                                 to_sampling(*sampling_values), system, suffix)
            return note, picture, found, reply

        button.click(run, [image, expression, frame_box, gold, *template, *controls], [status, drawn, boxes, raw])
        image.change(shown_errors(2, 0)(preview_of), image, [status, preview])
    return app


__all__ = ["FRAMES", "build_app", "grounding_view", "locate", "parse_gold_box", "predicted_boxes"]
