"""Curr-ReFT's three stage rewards, without its substring-containment fallback (which let an empty answer score 1).

- `curr_reft_judge` (stage 1): a yes/no (true/false) judgement of a statement; hedges score 0.
- `curr_reft_choice` (stage 2): the set of option letters A-E must equal the gold set.
- `curr_reft_open` (stage 3): by task — `math` via math-verify, `detection`/`grounding` IoU > 0.5, `mc` and `yes_no`
  exactly as `accuracy` scores them, `classification` set-IoU |pred ∩ gold| / |pred ∪ gold| of the normalized labels.
  Hedges earn 0: an answer naming more options or labels than the gold has (`A, B, C, D` for gold B, `yes, no`,
  `cat, dog, bird` for gold `cat`) scores 0, not the 1/4, 1/2 or 1/3 a set-IoU would pay for listing everything.

>>> curr_reft_choice_reward(["<answer>A, C</answer>", "<answer>A</answer>", "<answer></answer>"], answer=["AC"] * 3)
[1.0, 0.0, 0.0]
"""

from __future__ import annotations

import re
from typing import Any

from mmrl.rewards._columns import col, row_meta
from mmrl.rewards.accuracy import unbox, verify_math, verify_mc, verify_yes_no
from mmrl.rewards.extraction import extract_answer
from mmrl.rewards.grounding import grounding_correct
from mmrl.rewards.parsing import normalize_forms, normalize_text, parse_letters
from mmrl.rewards.registry import register_reward

_CHOICES = ["A", "B", "C", "D", "E"]  # only the letters matter; parse_letters limits to A-E


@register_reward("curr_reft_judge", reads_answer=True)
def curr_reft_judge_reward(completions, answer=None, **_) -> list:
    """Stage 1: 1.0 when the yes/no judgement equals the gold one.

    >>> curr_reft_judge_reward(["<answer>True</answer>", "<answer>yes or no</answer>"], answer=["yes", "yes"])
    [1.0, 0.0]
    """
    out: list[float | None] = []
    for completion, gold in zip(completions, col(answer, len(completions)), strict=True):
        pred = extract_answer(completion)
        out.append(verify_yes_no(pred, gold) if pred else (None if verify_yes_no("yes", gold) is None else 0.0))
    return out


@register_reward("curr_reft_choice", reads_answer=True)
def curr_reft_choice_reward(completions, answer=None, **_) -> list:
    """Stage 2: 1.0 when the chosen letter set (A-E) equals the gold set (no partial credit for a subset).

    >>> curr_reft_choice_reward(["<answer>B</answer>", "<answer>A, C</answer>", "<answer>A</answer>"],
    ...                         answer=["B", "A,C", "A,C"])
    [1.0, 1.0, 0.0]
    """
    out: list[float | None] = []
    for completion, gold in zip(completions, col(answer, len(completions)), strict=True):
        gold_set = parse_letters(gold, _CHOICES)
        if not gold_set:
            out.append(None)
            continue
        pred = extract_answer(completion)
        # read as `accuracy` reads mc: a box and the words around it (`not \\boxed{B}`: no answer), `\\text{B}`
        out.append(1.0 if pred and parse_letters(unbox(normalize_forms(pred)), _CHOICES) == gold_set else 0.0)
    return out


def _labels(value: Any) -> set[str]:
    items = value if isinstance(value, (list, tuple)) else re.split(r",|;|\band\b|\n", str(value))
    return {normalize_text(v) for v in items if normalize_text(v)}


# mmrl's own task names mapped onto Curr-ReFT's three open-ended families (synthetic curricula keep mmrl's names).
OPEN_FAMILY = {"math": "math", "count": "math", "number": "math", "detection": "detection", "grounding": "detection",
               "classification": "classification", "text": "classification", "yes_no": "yes_no", "mc": "mc"}


@register_reward("curr_reft_open", heavy=True, reads_answer=True)
def curr_reft_open_reward(completions, answer=None, task=None, **columns) -> list:
    """Stage 3 (open-ended), dispatched on task: math | detection (or grounding) | classification.

    >>> curr_reft_open_reward(["<answer>cat, dog</answer>", "<answer>\\\\frac{1}{2}</answer>"],
    ...                       answer=["cat, bird", "0.5"], task=["classification", "math"])
    [0.3333333333333333, 1.0]
    >>> curr_reft_open_reward(["<answer>A, B, C, D</answer>", "<answer>yes, no</answer>", "<answer>cat, dog</answer>"],
    ...                       answer=["B", "yes", "cat"], task=["mc", "yes_no", "classification"])
    [0.0, 0.0, 0.0]
    """
    n = len(completions)
    answers, tasks = col(answer, n), col(task, n, "math")
    out: list[float | None] = []
    for i, completion in enumerate(completions):
        pred, gold, kind = extract_answer(completion), answers[i], OPEN_FAMILY.get(tasks[i], tasks[i])
        if gold is None or (isinstance(gold, str) and not gold.strip()):
            out.append(None)
        elif kind == "math":
            out.append(verify_math(pred, str(gold)) if pred else (None if verify_math("0", str(gold)) is None else 0.0))
        elif kind == "detection":
            out.append(grounding_correct(pred, gold, **row_meta(columns, i, n)))
        elif kind == "mc":
            out.append(verify_mc(pred, gold, row_meta(columns, i, n).get("choices")) if pred else
                       (None if verify_mc("A", gold, row_meta(columns, i, n).get("choices")) is None else 0.0))
        elif kind == "yes_no":
            out.append(verify_yes_no(pred, gold) if pred else (None if verify_yes_no("yes", gold) is None else 0.0))
        elif kind == "classification":
            gold_set = _labels(gold)
            pred_set = _labels(unbox(normalize_forms(pred))) if pred else set()
            if not gold_set:
                out.append(None)
            elif len(pred_set) > len(gold_set):  # a hedge: listing more labels than there are must not pay
                out.append(0.0)
            else:
                out.append(len(pred_set & gold_set) / len(pred_set | gold_set))
        else:
            raise ValueError(f"curr_reft_open: unknown task '{kind}' ({', '.join(sorted(OPEN_FAMILY))})")
    return out
