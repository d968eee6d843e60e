"""Reasoning chat (`mmrl demo chat --model PATH|preset`): image + question; the reasoning streams into a collapsible
"thinking" panel and the answer apart; sampling controls; with a gold answer, the format and accuracy rewards of the
reply (the same functions training uses).

The prompt is the one the checkpoint was trained with (its run's system prompt and suffix, shown and editable in the
page), and the task of a gold answer is inferred as the data loader infers it (`mmrl.data.answers`): "red" is a `text`
answer, "3" to "how many...?" a `count`, "B" with choices an `mc`, unless the page picks a task.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from demos._common import (
    DemoInputError,
    image_input,
    image_preview,
    preview_of,
    read_upload,
    sampling_controls,
    shown_errors,
    template_controls,
    to_sampling,
)
from demos._scoring import TASKS, GoldError, score_all
from mmrl.data.answers import clean_answer, infer_task
from mmrl.rewards import extract_answer

AUTO = "auto (from the gold)"
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


def _choices(text: str) -> list[str] | None:
    return [c.strip() for c in (text or "").splitlines() if c.strip()] or None


def gold_and_task(gold: str, task: str, choices: str = "", question: str = "") -> tuple[str, str]:
    """(the gold as the rewards take it, the task): the gold cleaned and the task inferred as a dataset record's are
    (`clean_answer`, `infer_task`) when `task` is AUTO; a task picked in the page is kept.

    >>> gold_and_task("red", AUTO), gold_and_task("$3$", AUTO, question="How many dogs?")
    (('red', 'text'), ('3', 'count'))
    >>> gold_and_task("B", AUTO, "a cat\\na dog"), gold_and_task("[1, 2, 30, 40]", AUTO)
    (('B', 'mc'), ('[1, 2, 30, 40]', 'grounding'))
    """
    cleaned = clean_answer((gold or "").strip())
    text = cleaned if isinstance(cleaned, str) else json.dumps(cleaned)
    if task in (AUTO, "", None):
        return text, infer_task(cleaned, _choices(choices), question or "")
    if task not in TASKS:
        raise DemoInputError(f"task: one of {', '.join(TASKS)} or {AUTO!r} (got {task!r})")
    return text, task


def reply_rewards(completion: str, gold: str, task: str = AUTO, choices: str = "", question: str = "",
                  ) -> list[list[Any]]:
    """[reward, score, note] rows for the format and accuracy rewards; [] without a gold."""
    if not (gold or "").strip():
        return []
    gold, task = gold_and_task(gold, task, choices, question)
    try:
        rows, _ = score_all(completion, gold, task, _choices(choices))
    except GoldError as err:
        raise DemoInputError(str(err)) from None
    return [[r.name, "None" if r.score is None else r.score, r.note] for r in rows if r.name in SHOWN_REWARDS]


def chat_stream(model: Any, image_path: str | None, question: str, sampling: Any, gold: str = "", task: str = AUTO,
                choices: str = "", system: str | None = None, suffix: str | None = None,
                ) -> Iterator[tuple[str, str, str, list, str]]:
    """Yields (status, thinking, answer, rewards, raw reply) as the reply grows; the rewards come with the last one.
    `system` / `suffix`: the prompt template (None: the model's, as trained; "": none)."""
    if not (question or "").strip():
        raise DemoInputError("type a question first")
    image = read_upload(image_path) if image_path else None
    done = "done"
    if (gold or "").strip():  # a gold the rewards cannot read is reported before the model runs
        _, picked = gold_and_task(gold, task, choices, question)
        done += f" · task **{picked}**" + (" (inferred from the gold)" if task in (AUTO, "", None) else "")
    text = ""
    for delta in model.stream(question.strip(), image, sampling, system, suffix):
        text += delta
        thinking, answer = split_reply(text)
        yield "generating…", thinking, answer, [], text
    thinking, answer = split_reply(text)
    yield done, thinking, answer, reply_rewards(text, gold, task, choices, question), text


def build_app(model: Any) -> Any:
    import gradio as gr

    with gr.Blocks(title="mmrl · reasoning chat") as app:
        gr.Markdown(f"## Reasoning chat · `{model.name}`\nUpload an image, ask a question: the reasoning streams into "
                    "the *thinking* panel, the answer below it. Give a gold answer to see the format and accuracy "
                    "rewards of the reply.")
        with gr.Row():
            with gr.Column():
                image = image_input(gr, "chat-image", "image (optional)")
                preview = image_preview(gr, "chat-preview")
                question = gr.Textbox(label="question", lines=2, elem_id="chat-question")
                with gr.Row():
                    gold = gr.Textbox(label="gold answer (optional)", elem_id="chat-gold")
                    task = gr.Dropdown([AUTO, *ACCURACY_TASKS], value=AUTO, label="task", elem_id="chat-task")
                choices = gr.Textbox(label="choices (mc: one per line)", lines=2, elem_id="chat-choices")
                template = template_controls(gr, "chat", model, open_=True)
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
        def run(image_path, question_text, gold_text, task_name, choices_text, system, suffix, *sampling_values):
            sampling = to_sampling(*sampling_values)
            yield from chat_stream(model, image_path, question_text, sampling, gold_text, task_name, choices_text,
                                   system, suffix)

        button.click(run, [image, question, gold, task, choices, *template, *controls],
                     [status, thinking, answer, rewards, raw])
        image.change(shown_errors(2, 0)(preview_of), image, [status, preview])
    return app


__all__ = ["AUTO", "build_app", "chat_stream", "gold_and_task", "reply_rewards", "split_reply"]
