"""Format rewards: is the completion laid out as `<think>…</think><answer>…</answer>`?

- `format` (strict R1): exactly one `<think>…</think>` followed by exactly one non-empty `<answer>…</answer>`;
  whitespace may surround and separate them; nothing before or after.
- `format_lenient` (TRL's `think_format_reward` definition): the completion starts with one `<think>…</think>` block
  (no nested or second `<think>`); anything may follow. Use it when answers are not tagged (e.g. `\\boxed{}`).
"""

from __future__ import annotations

import re

from mmrl.rewards.extraction import prints_nothing
from mmrl.rewards.registry import register_reward

_STRICT = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.DOTALL)


def is_strict_format(text: str) -> bool:
    """One think block then one non-empty answer block, nothing else."""
    if not isinstance(text, str):
        return False
    if any(text.count(tag) != 1 for tag in ("<think>", "</think>", "<answer>", "</answer>")):
        return False
    match = _STRICT.fullmatch(text)
    # An answer of invisible characters only (zero-width space, BOM, bidi marks, fillers) is an empty answer.
    return bool(match) and not prints_nothing(match.group(2))


def is_lenient_format(text: str) -> bool:
    """Starts with `<think>`, has exactly one `<think>` and one `</think>` (after it)."""
    if not isinstance(text, str) or not text.startswith("<think>"):
        return False
    return text.count("<think>") == 1 and text.count("</think>") == 1


@register_reward("format", reads_answer=True)
def format_reward(completions: list[str], **_) -> list[float]:
    """1.0 for the strict R1 layout, else 0.0.

    >>> format_reward(["<think>r</think>\\n<answer>4</answer>", "<think>r</think><answer>4</answer> extra",
    ...                "<answer>4</answer>", "<think>r</think><answer></answer>"])
    [1.0, 0.0, 0.0, 0.0]
    """
    return [1.0 if is_strict_format(c) else 0.0 for c in completions]


@register_reward("format_lenient")
def format_lenient_reward(completions: list[str], **_) -> list[float]:
    """1.0 when the completion opens with a single `<think>…</think>` block (TRL's think-format), else 0.0.

    >>> format_lenient_reward(["<think>r</think>The answer is 4.", "r</think>4", "<think>a<think>b</think></think>4"])
    [1.0, 0.0, 0.0]
    """
    return [1.0 if is_lenient_format(c) else 0.0 for c in completions]
