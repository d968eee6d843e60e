"""Score one completion with every reward that applies to its task, and explain the parse (rewards demo, and the
gold-answer panels of the model demos). Uses `mmrl.rewards` only: the registry, extraction and the task parsers.

>>> rows, parse = score_all("<think>2+2</think><answer>4</answer>", "4", "count")
>>> {r.name: r.score for r in rows}["format"], {r.name: r.score for r in rows}["accuracy"]
(1.0, 1.0)
>>> parse.answer, parse.rule
('4', '<answer> tags')
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from typing import Any

from mmrl.rewards import extract_answer, get_reward
from mmrl.rewards.extraction import THINK_CLOSE, last_boxed, strip_reasoning
from mmrl.rewards.safe import call_with_timeout

TASKS = ("math", "mc", "yes_no", "count", "number", "text", "grounding", "gui")
ALWAYS = ("format", "format_lenient", "repetition_penalty")
BY_TASK: dict[str, tuple[str, ...]] = {
    "math": ("accuracy", "hard_format_accuracy"),
    "mc": ("accuracy", "hard_format_accuracy", "curr_reft_choice"),
    "yes_no": ("accuracy", "hard_format_accuracy", "curr_reft_judge"),
    "count": ("accuracy", "hard_format_accuracy"),
    "number": ("accuracy", "hard_format_accuracy"),
    "text": ("accuracy", "hard_format_accuracy"),
    "grounding": ("accuracy", "iou", "giou", "iou_threshold", "multi_box_iou"),
    "gui": ("gui_action", "point_in_box"),
}
STRUCTURED = ("grounding", "gui")  # golds given as JSON (a box, a list of boxes, an action dict)
TIMEOUT_S = 5.0


class GoldError(ValueError):
    """The gold text cannot be read for the task; the message says what to type."""


@dataclass
class RewardRow:
    name: str
    score: float | None
    note: str  # "", "unscorable: ...", "error: ...", "timeout"


@dataclass
class Parse:
    answer: str | None  # the extracted answer
    rule: str  # which extraction rule gave it
    details: list[str]  # what the task parser read from the answer and the gold


def parse_gold(text: str, task: str) -> Any:
    """The gold as the rewards take it: JSON (or a Python literal) for grounding / gui, the text otherwise."""
    text = (text or "").strip()
    if task not in STRUCTURED:
        return text
    if not text:
        return None
    for loader in (json.loads, ast.literal_eval):
        try:
            return loader(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    example = '[10, 20, 110, 80]' if task == "grounding" else '{"action_type": "click", "bbox": [10, 20, 110, 80]}'
    raise GoldError(f"gold: for task '{task}' give JSON, e.g. {example}")


def parse_size(text: str | None, field: str) -> tuple[int, int] | None:
    """'640x480' or '640, 480' -> (640, 480); empty -> None."""
    text = (text or "").strip().lower().replace(" ", "")
    if not text:
        return None
    for sep in ("x", ","):
        if sep in text:
            a, _, b = text.partition(sep)
            if a.isdigit() and b.isdigit() and int(a) > 0 and int(b) > 0:
                return int(a), int(b)
    raise GoldError(f"{field}: give WIDTHxHEIGHT in pixels, e.g. 640x480 (got {text!r:.40})")


def explain_extraction(completion: str) -> Parse:
    """The extracted answer and the rule that produced it (the same call the rewards make)."""
    answer = extract_answer(completion, allow_boxed=True)
    visible = strip_reasoning(completion)
    if answer is None:
        if "<answer>" in completion and "<answer>" not in visible:
            rule = "none: the only <answer> is inside the reasoning, which does not count"
        elif "<think>" in completion and THINK_CLOSE not in completion:
            rule = "none: <think> is never closed, so everything after it is reasoning"
        else:
            rule = "none: no non-empty <answer>…</answer> and no \\boxed{} after the reasoning"
    elif extract_answer(completion) is not None:
        rule = "<answer> tags"
    else:
        rule = "\\boxed{} (no answer tags)" if last_boxed(visible) is not None else "whole text"
    return Parse(answer=answer, rule=rule, details=[])


def _task_details(answer: str | None, gold: Any, task: str, choices: list[str] | None) -> list[str]:
    """What the task's parser reads from the prediction and the gold (the reason behind the accuracy)."""
    from mmrl.rewards import parsing

    def show(value: Any) -> str:
        if isinstance(value, frozenset):
            return "{" + ", ".join(sorted(value)) + "}" if value else "nothing"
        return "nothing" if value is None else str(value)

    if task == "math":
        from mmrl.rewards.math_answers import _parse_math, parse_math_gold

        pred = _parse_math(answer)[:1] if answer else []
        gold_parsed = parse_math_gold(str(gold).strip())[:1]
        return [f"math-verify reads the answer as: {show(pred[0]) if pred else 'nothing'}",
                f"and the gold as: {show(gold_parsed[0]) if gold_parsed else 'nothing (gold unusable)'}"]
    if task == "mc":
        return [f"letters in the answer: {show(parsing.parse_letters(answer or '', choices))}",
                f"letters in the gold: {show(parsing.parse_letters(gold, choices))}"]
    if task == "yes_no":
        return [f"answer reads as: {show(parsing.parse_yes_no(answer or ''))}",
                f"gold reads as: {show(parsing.parse_yes_no(gold))}"]
    if task in ("count", "number"):
        return [f"number in the answer: {show(parsing.parse_number(answer or ''))}",
                f"number in the gold: {show(parsing.parse_number(gold))}"]
    if task == "text":
        return [f"normalized answer: {parsing.normalize_text(answer or '')!r}",
                f"normalized gold: {parsing.normalize_text(str(gold))!r}"]
    if task == "grounding":
        from mmrl.rewards.grounding import parse_boxes

        return [f"boxes in the answer: {parse_boxes(answer) or 'none'}", f"gold: {gold}"]
    if task == "gui":
        from mmrl.rewards.gui import parse_action

        return [f"action in the answer: {parse_action(answer) or 'none (not one action dict)'}", f"gold: {gold}"]
    return []


def score_all(completion: str, gold_text: str, task: str, choices: list[str] | None = None,
              image_size: tuple[int, int] | None = None, input_size: tuple[int, int] | None = None,
              ) -> tuple[list[RewardRow], Parse]:
    """Every applicable reward's score for one completion, and the parse behind them.

    Raises `GoldError` when the gold (or a size) cannot be read; a reward that fails or runs out of time on this item
    is reported in its row, never turned into a score.
    """
    if task not in TASKS:
        raise GoldError(f"task: one of {', '.join(TASKS)} (got {task!r})")
    gold = parse_gold(gold_text, task)
    columns: dict[str, list] = {"answer": [gold], "task": [task], "choices": [choices or None],
                                "image_size": [image_size], "input_size": [input_size]}
    rows = []
    for name in ALWAYS + BY_TASK[task]:
        outcome = call_with_timeout(get_reward(name), TIMEOUT_S, [completion], **columns)
        if outcome.status == "timeout":
            rows.append(RewardRow(name, None, f"timeout: over {TIMEOUT_S:.0f} s"))
        elif outcome.status == "error":
            rows.append(RewardRow(name, None, f"error: {outcome.message.splitlines()[0][:200]}"))
        else:
            score = outcome.value[0]
            note = "" if score is not None else "unscorable: the gold cannot be used for this reward"
            rows.append(RewardRow(name, None if score is None else float(score), note))
    parse = explain_extraction(completion)
    parse.details = _task_details(parse.answer, gold, task, choices)
    return rows, parse


__all__ = ["BY_TASK", "GoldError", "Parse", "RewardRow", "TASKS", "explain_extraction", "parse_gold", "parse_size",
           "score_all"]
