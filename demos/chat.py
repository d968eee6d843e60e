"""Reasoning chat (`mmrl demo chat --model PATH|preset`): image + question; the reasoning streams into a collapsible
"thinking" panel and the answer apart; sampling controls; with a gold answer, the format and accuracy rewards of the
reply (the same functions training uses).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from demos._common import DemoInputError, image_input, read_upload, sampling_controls, shown_errors, to_sampling
from demos._scoring import GoldError, score_all
from mmrl.rewards import extract_answer

ACCURACY_TASKS = ("math", "mc", "yes_no", "count", "number", "text")
SHOWN_REWARDS = ("format", "accuracy")


def split_reply(text: str) -> tuple[str, str]:
    """(reasoning, answer) of a reply so far: the reasoning is inside `<think>` (to the end while it is open), the
    answer is the `<answer>` content when there is one, else what follows the reasoning.

    >>> split_reply("<think>2+2 is 4</think> <answer>4</answer>")
    ('2+2 is 4', '4')
    >>> split_reply("<think>still thinking")
    ('still thinking', '')
    """
    close = text.rfind("</think>")
    if close >= 0:
        thinking, rest = text[:close], text[close + len("</think>"):]
    elif "<think>" in text:
        thinking, rest = text, ""
    else:
        thinking, rest = "", text
    thinking = thinking.replace("<think>", "").strip()
    answer = extract_answer(text)
    if answer is None:
        answer = rest.replace("<answer>", "").replace("</answer>", "").strip()
    return thinking, answer


def reply_rewards(completion: str, gold: str, task: str, choices: str = "") -> list[list[Any]]:
    """[reward, score, note] rows for the format and accuracy rewards; [] without a gold."""
    if not (gold or "").strip():
        return []
    choice_list = [c.strip() for c in (choices or "").splitlines() if c.strip()] or None
    try:
        rows, _ = score_all(completion, gold, task, choice_list)
    except GoldError as err:
        raise DemoInputError(str(err)) from None
    return [[r.name, "None" if r.score is None else r.score, r.note] for r in rows if r.name in SHOWN_REWARDS]


def chat_stream(model: Any, image_path: str | None, question: str, sampling: Any, gold: str = "", task: str = "math",
                choices: str = "") -> Iterator[tuple[str, str, str, list, str]]:
    """Yields (status, thinking, answer, rewards, raw reply) as the reply grows; the rewards come with the last one."""
    if not (question or "").strip():
        raise DemoInputError("type a question first")
    image = read_upload(image_path) if image_path else None
    text = ""
    for delta in model.stream(question.strip(), image, sampling):
        text += delta
        thinking, answer = split_reply(text)
        yield "generating…", thinking, answer, [], text
    thinking, answer = split_reply(text)
    yield "done", thinking, answer, reply_rewards(text, gold, task, choices), text


def build_app(model: Any) -> Any:
    import gradio as gr

    with gr.Blocks(title="mmrl · reasoning chat") as app:
        gr.Markdown(f"## Reasoning chat · `{model.name}`\nUpload an image, ask a question: the reasoning streams into "
                    "the *thinking* panel, the answer below it. Give a gold answer to see the format and accuracy "
                    "rewards of the reply.")
        with gr.Row():
            with gr.Column():
                image = image_input(gr, "chat-image", "image (optional)")
                question = gr.Textbox(label="question", lines=2, elem_id="chat-question")
                with gr.Row():
                    gold = gr.Textbox(label="gold answer (optional)", elem_id="chat-gold")
                    task = gr.Dropdown(list(ACCURACY_TASKS), value="math", label="task", elem_id="chat-task")
                choices = gr.Textbox(label="choices (mc: one per line)", lines=2, elem_id="chat-choices")
                controls = sampling_controls(gr, "chat")
                button = gr.Button("ask", variant="primary", elem_id="chat-ask")
            with gr.Column():
                status = gr.Markdown(elem_id="chat-status")
                with gr.Accordion("thinking", open=False, elem_id="chat-thinking-panel"):
                    # A textbox, not Markdown: reasoning is shown as written, tags and all.
                    thinking = gr.Textbox(show_label=False, lines=6, interactive=False, elem_id="chat-thinking")
                answer = gr.Textbox(label="answer", interactive=False, elem_id="chat-answer")
                rewards = gr.Dataframe(headers=["reward", "score", "note"], label="rewards (with a gold answer)",
                                       interactive=False, elem_id="chat-rewards")
                raw = gr.Textbox(label="raw reply", lines=4, interactive=False, elem_id="chat-raw")

        @shown_errors(5, 0)
        def run(image_path, question_text, gold_text, task_name, choices_text, *sampling_values):
            sampling = to_sampling(*sampling_values)
            yield from chat_stream(model, image_path, question_text, sampling, gold_text, task_name, choices_text)

        button.click(run, [image, question, gold, task, choices, *controls], [status, thinking, answer, rewards, raw])
    return app


__all__ = ["build_app", "chat_stream", "reply_rewards", "split_reply"]
