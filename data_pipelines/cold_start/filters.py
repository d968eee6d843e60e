"""Rule-based quality checks on a reasoner's reply, and the answer check against the gold.

>>> repeat_ratio("a b c a b c a b c", 3)
0.571...
>>> language_mix("The answer is 3"), round(language_mix("The answer 是 three"), 2)
(0.0, 0.07)
>>> malformed("<think>x</think>", "stop"), malformed("<think>x</think><answer>1</answer>", "length")
('no_answer', 'truncated')
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import Any

from mmrl.data.sample import Sample
from mmrl.rewards.accuracy import verify_answer
from mmrl.rewards.extraction import extract_answer
from mmrl.rewards.format import is_strict_format

_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def malformed(text: str, finish_reason: str, need_tags: bool = True) -> str | None:
    """Why a reply cannot be used at all (retried, then rejected with this reason), or None."""
    if finish_reason == "length":
        return "truncated"
    if not text.strip():
        return "empty"
    if need_tags:
        if not _THINK.search(text):
            return "no_think"
        found = _ANSWER.search(text)
        if not found or not found.group(1).strip():
            return "no_answer"
    return None


def think_words(text: str) -> list[str]:
    found = _THINK.search(text)
    return found.group(1).split() if found else []


def repeat_ratio(text: str, n: int) -> float:
    """Share of the n-grams that repeat an earlier one (0: all distinct; -> 1: one phrase looped)."""
    words = text.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def _script(ch: str) -> str:
    name = unicodedata.name(ch, "")
    for script in ("CJK", "HIRAGANA", "KATAKANA", "HANGUL", "CYRILLIC", "ARABIC", "GREEK", "LATIN"):
        if name.startswith(script) or f" {script} " in f" {name} ":
            return script
    return "OTHER"


def language_mix(text: str) -> float:
    """Share of letters outside the text's dominant script (Greek is left out: it is maths notation here)."""
    scripts = Counter(s for s in (_script(c) for c in text if c.isalpha()) if s != "GREEK")
    total = sum(scripts.values())
    return 1 - max(scripts.values()) / total if total else 0.0


def shingles(text: str) -> set[tuple[str, ...]]:
    words = text.lower().split()
    return {tuple(words[i:i + 3]) for i in range(max(1, len(words) - 2))}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def judge(text: str, sample: Sample, flt: Any) -> str | None:
    """The first reason to reject a well-formed reply (wrong answer first), or None to keep it."""
    if not is_strict_format(text):
        return "format"
    columns = {k: v for k, v in sample.reward_columns().items() if k not in ("answer", "task", "choices")}
    score = verify_answer(extract_answer(text, tags=("<answer>", "</answer>"), allow_boxed=True), sample.answer,
                          sample.task, sample.choices, **columns)
    if score is None:
        return "gold_unusable"
    if score < 1.0:
        return "wrong_answer"
    words = think_words(text)
    if not flt.min_think_words <= len(words) <= flt.max_think_words:
        return "length"
    if repeat_ratio(" ".join(words), flt.ngram) > flt.max_repeat_ratio:
        return "repetition"
    if language_mix(text) > flt.max_language_mix:
        return "language_mix"
    return None
