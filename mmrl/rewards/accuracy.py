"""Answer correctness, dispatched on the sample's task; shared by the `accuracy` reward and by `mmrl eval`.

`verify_answer(pred, answer, task, choices=None, **meta) -> 1.0 | 0.0 | None`:
- `None` means the GOLD cannot be used (empty, unparsable): the item is unscorable, never a free 0 or 1.
- A missing or unparsable PREDICTION is simply wrong: 0.0.

Tasks: `math` (math-verify, `verify(gold, pred)` in that order; bare LaTeX golds and answers are read whole as LaTeX,
absurd answers such as `10^{10^{10}}` are rejected before parsing, see limits.py), `mc` (letter sets), `yes_no`,
`count` (integers, number words such as "one hundred"), `number` (tolerance / MathVista `precision` and `unit`; a
different unit is wrong, units are not converted), `text` (normalized exact match), `grounding` (IoU > 0.5).

Spelling variants that cannot change the answer are folded first (`parsing.normalize_forms` / `numeric_forms`):
full-width forms (`５`, `Ｂ`) and the Unicode minus for every task; for numbers and math also a sentence's final
period (`5.`), the degree sign (`5°` = `5^\\circ`) and vulgar fractions (`½` is `\\frac{1}{2}`, then math-verify
decides). `5.5` is not `5`, and `5. 6` is two numbers. A completion with several `<answer>` blocks has no answer
(`extraction.extract_answer`): 0.0, counted as `accuracy/multiple_answers` by the composite.

>>> verify_answer("(B) a dog", "B", "mc", choices=["a cat", "a dog"])
1.0
>>> verify_answer("A, B", "B", "mc") , verify_answer("yes or no", "yes", "yes_no")
(0.0, 0.0)
>>> verify_answer("three", 3, "count"), verify_answer("3", "", "count")
(1.0, None)
>>> verify_answer("2", "2\\sqrt{3}", "math"), verify_answer("5 m", "5 cm", "number")
(0.0, 0.0)
"""

from __future__ import annotations

import logging
import re
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Any

from mmrl.errors import UserError
from mmrl.rewards._columns import col, row_meta
from mmrl.rewards.boxes import read_box, stated
from mmrl.rewards.extraction import extract_answer
from mmrl.rewards.format import is_strict_format
from mmrl.rewards.limits import MAX_TEXT_CHARS
from mmrl.rewards.math_answers import parse_math_gold, verify_math
from mmrl.rewards.parsing import (
    normalize_forms,
    normalize_text,
    number_unit,
    numeric_forms,
    parse_letters,
    parse_number,
    parse_yes_no,
)
from mmrl.rewards.registry import register_reward

# math-verify warns on every call that its own timeout is off; ours (safe.py) is on.
logging.getLogger("math_verify").setLevel(logging.ERROR)

ACCURACY_TASKS = ("math", "mc", "yes_no", "count", "number", "text", "grounding")


def unbox(pred: str) -> str:
    """`\\boxed{B}` -> `B` for the non-math tasks (math-verify reads boxes itself); "" (no answer) for several boxes or a
    box hedged or ruled out by the words around it (`3 or \\boxed{4}`, `not \\boxed{C}`: see boxes.read_box)."""
    reading = read_box(pred, sentence_only=True)
    if reading.problem:
        return ""
    return reading.content if reading.content is not None else pred


_unbox = unbox


# ---------------------------------------------------------------- other tasks
def _gold_empty(answer: Any) -> bool:
    return answer is None or (isinstance(answer, str) and not answer.strip()) or answer == []


def verify_mc(pred: str, answer: Any, choices: list[str] | None) -> float | None:
    gold = parse_letters(answer, choices)
    if not gold:
        return None
    picked = parse_letters(_unbox(pred), choices)
    return 1.0 if picked == gold else 0.0  # more or fewer letters than the gold set: 0


def verify_yes_no(pred: str, answer: Any) -> float | None:
    gold = parse_yes_no(answer)
    if gold is None:
        return None
    return 1.0 if parse_yes_no(_unbox(pred)) == gold else 0.0


def verify_count(pred: str, answer: Any) -> float | None:
    gold = parse_number(answer)
    if gold is None or gold.denominator != 1:
        return None
    text = _unbox(pred)
    if len(text) > MAX_TEXT_CHARS:  # not a count: a megabyte of "1 1 1" states one number 10^5 times
        return 0.0
    said = stated(text, symbols=True)  # "5, not 4" -> "5"; "3 or more", "at least 3", `\geq 3`: a bound, no count
    if said is None:
        return 0.0
    value = parse_number(numeric_forms(said))
    return 1.0 if value is not None and value == gold else 0.0


def _round(value: Fraction, places: int) -> Decimal:
    exact = Decimal(value.numerator) / Decimal(value.denominator)
    return exact.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


def verify_number(
    pred: str,
    answer: Any,
    precision: int | None = None,
    unit: str | None = None,
    rel_tol: float = 1e-6,
    abs_tol: float = 0.0,
) -> float | None:
    """MathVista-style: with `precision` compare both rounded to that many decimals; integer golds compare exactly;
    other golds within `max(abs_tol, rel_tol * |gold|)`. `\\frac{1}{2}` reads as 0.5.

    Units are never converted: when the gold states a unit (`5 cm`, or the `unit` column), a prediction that states a
    DIFFERENT unit (`5 m`, `5 mm`) is wrong; a prediction without a unit is compared by its number alone."""
    gold = parse_number(answer, unit=unit)
    if gold is None:
        return None
    text = numeric_forms(_unbox(pred))
    if len(text) > MAX_TEXT_CHARS:  # not a number (see verify_count)
        return 0.0
    said = stated(text, symbols=True)  # "2.5, not 3" -> "2.5"; "at least 2.5", `\ge 2.5`: a bound (verify_count)
    if said is None:
        return 0.0
    text = said
    value = parse_number(text, unit=unit)
    if value is None:
        return 0.0
    gold_unit = _unit_of(answer, unit)
    pred_unit = number_unit(text)
    if gold_unit and pred_unit and pred_unit != gold_unit:
        return 0.0
    if precision is not None and int(precision) >= 0:
        return 1.0 if _round(value, int(precision)) == _round(gold, int(precision)) else 0.0
    if gold.denominator == 1 and "." not in str(answer):
        return 1.0 if value == gold else 0.0
    return 1.0 if abs(value - gold) <= max(Fraction(abs_tol), Fraction(rel_tol) * abs(gold)) else 0.0


def _unit_of(answer: Any, unit: str | None) -> str | None:
    """The gold's unit: the one written after its number, else the sample's `unit` column."""
    written = number_unit(answer) if isinstance(answer, str) else None
    if not written and isinstance(answer, str) and re.match(r"\s*\\?\$\s*[-+]?\d", answer):
        written = "$"  # a currency gold (`\$18.90`): "18.90 euros" is another unit, "18.90 dollars" the same
    return written or (number_unit("1 " + unit.strip()) if unit and unit.strip() else None)


def verify_text(pred: str, answer: Any) -> float | None:
    golds = answer if isinstance(answer, (list, tuple)) else [answer]
    golds = [normalize_text(g) for g in golds if not _gold_empty(g)]
    golds = [g for g in golds if g]
    if not golds:
        return None
    return 1.0 if normalize_text(_unbox(pred)) in golds else 0.0


def verify_answer(pred: str | None, answer: Any, task: str, choices: list[str] | None = None, **meta: Any) -> float | None:
    """1.0 / 0.0 for the extracted prediction `pred` against the gold `answer`; None when the gold is unusable."""
    if _gold_empty(answer):
        return None
    task = task or "text"
    if task not in ACCURACY_TASKS:
        raise UserError(f"accuracy: unknown task '{task}' (sample {meta.get('id', '?')}); known: {', '.join(ACCURACY_TASKS)}")
    if task == "grounding":
        from mmrl.rewards.grounding import grounding_correct

        return grounding_correct(pred, answer, **meta)
    if pred is None or not str(pred).strip():
        # Still reject a bad gold first so it is reported rather than scored 0.
        return None if _gold_unusable(answer, task, choices) else 0.0
    pred = normalize_forms(str(pred))  # full-width forms and the Unicode minus, for every task
    if task == "math":
        return verify_math(pred, str(answer))
    if task == "mc":
        return verify_mc(pred, answer, choices)
    if task == "yes_no":
        return verify_yes_no(pred, answer)
    if task == "count":
        return verify_count(pred, answer)
    if task == "number":
        return verify_number(pred, answer, precision=meta.get("precision"), unit=meta.get("unit"),
                             rel_tol=meta.get("rel_tol", 1e-6), abs_tol=meta.get("abs_tol", 0.0))  # fmt: skip
    return verify_text(pred, answer)


def _gold_unusable(answer: Any, task: str, choices: list[str] | None) -> bool:
    if task == "math":
        return not parse_math_gold(str(answer).strip())
    if task == "mc":
        return not parse_letters(answer, choices)
    if task == "yes_no":
        return parse_yes_no(answer) is None
    if task in ("count", "number"):
        gold = parse_number(answer)
        return gold is None or (task == "count" and gold.denominator != 1)
    return False


def _score_all(completions, answer, task, choices, tags, allow_boxed, columns, strict_format=False) -> list:
    n = len(completions)
    answers, tasks, choice_lists = col(answer, n), col(task, n, "text"), col(choices, n)
    out: list[float | None] = []
    for i, completion in enumerate(completions):
        meta = row_meta(columns, i, n)
        pred = extract_answer(completion, tags=tags, allow_boxed=allow_boxed)
        score = verify_answer(pred, answers[i], tasks[i], choice_lists[i], **meta)
        if strict_format and score is not None and not is_strict_format(completion):
            score = 0.0
        out.append(score)
    return out


@register_reward("accuracy", heavy=True, reads_answer=True)
def accuracy_reward(
    completions: list[str],
    answer: list | None = None,
    task: list | None = None,
    choices: list | None = None,
    tags: tuple[str, str] | None = ("<answer>", "</answer>"),
    allow_boxed: bool = True,
    **columns: Any,
) -> list[float | None]:
    """1.0 when the extracted answer is correct for the sample's task, 0.0 when not, None when the gold is unusable.

    >>> accuracy_reward(["<think>..</think><answer>\\\\frac{1}{2}</answer>", "<answer>0.5</answer>", "<answer></answer>"],
    ...                 answer=["1/2", "$\\\\frac12$", "1/2"], task=["math"] * 3)
    [1.0, 1.0, 0.0]
    >>> accuracy_reward(["<answer>4</answer>"], answer=["forty two"], task=["math"])
    [None]
    """
    return _score_all(completions, answer, task, choices, tags, allow_boxed, columns)


@register_reward("hard_format_accuracy", heavy=True, reads_answer=True)
def hard_format_accuracy_reward(
    completions: list[str],
    answer: list | None = None,
    task: list | None = None,
    choices: list | None = None,
    tags: tuple[str, str] | None = ("<answer>", "</answer>"),
    allow_boxed: bool = True,
    **columns: Any,
) -> list[float | None]:
    """Vision-R1's hard formatting result reward: 1.0 only when the strict format holds AND the answer is correct.

    >>> hard_format_accuracy_reward(["<think>x</think><answer>7</answer>", "<answer>7</answer>"],
    ...                             answer=["7", "7"], task=["count", "count"])
    [1.0, 0.0]
    """
    return _score_all(completions, answer, task, choices, tags, allow_boxed, columns, strict_format=True)
