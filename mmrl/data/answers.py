"""Clean gold answers and infer the task a record implies.

Peer datasets wrap their gold answers in many ways (`$12$`, `<answer> 2 </answer>`, `\\boxed{3}`, `"[1, 2, 3, 4]"`);
rewards compare against the clean value, so cleaning happens once, here.

>>> clean_answer("$12$"), clean_answer("<answer> 2 </answer>"), clean_answer(4)
('12', '2', '4')
>>> infer_task("B", choices=["1", "2"]), infer_task("yes"), infer_task("3.5"), infer_task([1, 2, 3, 4])
('mc', 'yes_no', 'number', 'grounding')
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_BOXED = re.compile(r"^\\boxed\{(.*)\}$", re.DOTALL)
_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")
_LETTERS = re.compile(r"^\(?([A-Z])\)?(\s*[,;]?\s*\(?[A-Z]\)?)*\.?$")
_OPTION_LINE = re.compile(r"(?m)^\s*\(?([A-Z])[\).:：]\s*(.+?)\s*$")
_BOX_TEXT = re.compile(r"^\[\s*-?[\d.]+\s*,\s*-?[\d.]+\s*,\s*-?[\d.]+\s*,\s*-?[\d.]+\s*\]$")
YES_NO = {"yes", "no", "true", "false"}


def strip_answer_tags(text: str) -> str:
    """The content of the last `<answer>...</answer>` block, or the text itself."""
    found = _ANSWER_TAG.findall(text)
    return found[-1] if found else text


def clean_answer(value: Any) -> Any:
    """Normalize a gold answer: numbers -> str, strings unwrapped from tags/`$...$`/`\\boxed{}`, box strings -> lists."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            # Numbers stay numbers: a box keeps its 4 coordinates, and a 5-number "box" stays visibly wrong for
            # `mmrl data check` instead of becoming five acceptable text answers.
            return [float(v) if isinstance(v, float) else v for v in value]
        return [clean_answer(v) for v in value]
    if not isinstance(value, str):
        return value
    text = strip_answer_tags(value).strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(text) > len(left) + len(right) and text.startswith(left) and text.endswith(right):
            text = text[len(left): -len(right)].strip()
            break
    boxed = _BOXED.match(text)
    if boxed:
        text = boxed.group(1).strip()
    if _BOX_TEXT.match(text):
        return [_number(v) for v in json.loads(text)]
    if text.startswith("{") and text.endswith("}"):
        parsed = _parse_literal(text)
        if isinstance(parsed, dict):
            return parsed
    return text


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else float(value)


def _parse_literal(text: str) -> Any:
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError):
            continue
    return None


_CURRENCY = re.compile(r"^\\?\$\s*(?=[-+]?[\d.])")  # `\$18.90` / `$18.90`: an amount of money is a number


def is_number(text: Any) -> bool:
    return isinstance(text, str) and bool(_NUMBER.match(_CURRENCY.sub("", text.strip()).replace(",", "")))


def is_letters(text: Any) -> bool:
    return isinstance(text, str) and bool(_LETTERS.match(text.strip()))


def options_in_text(text: str) -> list[str]:
    """Option texts listed as `A: ...` / `(B) ...` / `C. ...` lines in a question, in letter order."""
    found = _OPTION_LINE.findall(text or "")
    letters = [letter for letter, _ in found]
    if len(found) >= 2 and letters == [chr(65 + i) for i in range(len(found))]:
        return [option for _, option in found]
    return []


def infer_task(answer: Any, choices: list[str] | None = None, prompt_text: str = "") -> str:
    """The task a gold answer implies: gui, grounding, mc, yes_no, number, math or text."""
    if isinstance(answer, dict) and ("action_type" in answer or "action" in answer):
        return "gui"
    if isinstance(answer, list) and len(answer) == 4 and all(isinstance(v, (int, float)) for v in answer):
        return "grounding"
    if not isinstance(answer, str):
        return "text"
    if is_letters(answer) and (choices or options_in_text(prompt_text)):
        return "mc"
    if answer.strip().lower() in YES_NO:
        return "yes_no"
    if is_number(answer):
        return "count" if re.search(r"\bhow many\b", prompt_text or "", re.IGNORECASE) else "number"
    if "\\" in answer or re.search(r"[\^=]|\d\s*/\s*\d|\d\s*[°%]", answer):
        return "math"
    return "text"


def format_choices(question: str, choices: list[str]) -> str:
    """Append `A. ...` option lines to a question (unless they are already listed)."""
    if options_in_text(question):
        return question
    lines = "\n".join(f"{chr(65 + i)}. {c}" for i, c in enumerate(choices))
    return f"{question}\nOptions:\n{lines}"
