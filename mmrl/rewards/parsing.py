"""Parsers for answer kinds: numbers (exact, with number words), option letters, yes/no, normalized text.

Numbers are parsed into `Fraction` so that huge integers compare exactly (a float says 10**30 == 10**30 + 1).

>>> parse_number("1,234.5 cm", unit="cm")
Fraction(2469, 2)
>>> parse_number("twenty-one")
Fraction(21, 1)
>>> parse_yes_no("Yes, it is.") , parse_yes_no("yes or no")
('yes', None)
>>> sorted(parse_letters("(B) a dog", choices=["a cat", "a dog"]))
['B']
"""

from __future__ import annotations

import re
import string
from fractions import Fraction

_UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19,
}  # fmt: skip
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
_WORD_NUMBER = re.compile(
    r"\b(?:(" + "|".join(_TENS) + r")(?:[\s-](" + "|".join(k for k in _UNITS if _UNITS[k] < 10 and k != "zero") + r"))?"
    r"|(" + "|".join(_UNITS) + r")|(hundred))\b",
    re.IGNORECASE,
)
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w])")
_MAX_DIGITS = 4000  # a number longer than this is not an answer; Fraction on it would be slow


def _word_values(text: str) -> list[Fraction]:
    values = []
    for m in _WORD_NUMBER.finditer(text):
        if m.group(1):
            values.append(Fraction(_TENS[m.group(1).lower()] + (_UNITS[m.group(2).lower()] if m.group(2) else 0)))
        elif m.group(3):
            values.append(Fraction(_UNITS[m.group(3).lower()]))
        else:
            values.append(Fraction(100))
    return values


def find_numbers(text: str, words: bool = True) -> list[Fraction]:
    """All numbers in `text` (digits with optional thousands commas, decimals, exponents; number words)."""
    values: list[Fraction] = []
    for m in _NUMBER.finditer(text):
        token = m.group(0)
        if not any(ch.isdigit() for ch in token) or len(token) > _MAX_DIGITS:
            continue
        try:
            values.append(Fraction(token.replace(",", "")))
        except (ValueError, ZeroDivisionError):
            continue
    if words:
        values.extend(_word_values(text))
    return values


def parse_number(text, unit: str | None = None, words: bool = True) -> Fraction | None:
    """The single number a short answer states, or None (none, or several different ones)."""
    if isinstance(text, bool):
        return None
    if isinstance(text, (int, Fraction)):
        return Fraction(text)
    if isinstance(text, float):
        return Fraction(text) if text == text and abs(text) != float("inf") else None
    if not isinstance(text, str):
        return None
    cleaned = text.strip().replace("$", "").replace("\\%", "%").rstrip(".")
    if unit:
        cleaned = re.sub(re.escape(unit.strip()) + r"\s*$", "", cleaned, flags=re.IGNORECASE).strip()
    cleaned = cleaned.rstrip("%").strip()
    frac = re.fullmatch(r"([-+]?\d+)\s*/\s*(\d+)", cleaned)
    if frac and int(frac.group(2)) != 0:
        return Fraction(int(frac.group(1)), int(frac.group(2)))
    values = set(find_numbers(cleaned, words=words))
    return values.pop() if len(values) == 1 else None


def normalize_text(text: str) -> str:
    """Lowercase, drop punctuation and articles, collapse whitespace (SQuAD-style normalization)."""
    text = str(text).lower()
    text = "".join(ch for ch in text if ch not in string.punctuation)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _light(text: str) -> str:
    return " ".join("".join(ch for ch in str(text).lower() if ch not in string.punctuation).split())


_YES = {"yes", "true", "correct", "right", "y"}
_NO = {"no", "false", "incorrect", "wrong", "n"}


def parse_yes_no(text) -> str | None:
    """'yes' / 'no', or None when neither or both are said ("yes or no" is a hedge, not an answer)."""
    if isinstance(text, bool):
        return "yes" if text else "no"
    if not isinstance(text, str):
        return None
    words = re.findall(r"[a-z]+", text.lower())
    polarities = set()
    for i, word in enumerate(words):
        negated = i > 0 and words[i - 1] == "not"
        if word in _YES:
            polarities.add("no" if negated else "yes")
        elif word in _NO:
            polarities.add("yes" if negated else "no")
    return polarities.pop() if len(polarities) == 1 else None


def _letters_of(choices: list[str] | None) -> str:
    return string.ascii_uppercase[: len(choices)] if choices else string.ascii_uppercase


def parse_letters(text, choices: list[str] | None = None) -> frozenset[str] | None:
    """The option letter set an answer picks: `B`, `(B)`, `B.`, `(B) text`, `A, C`, or a choice's own text."""
    if isinstance(text, (list, tuple)):
        parts = [parse_letters(t, choices) for t in text]
        if not parts or any(p is None for p in parts):
            return None
        return frozenset().union(*parts)  # type: ignore[arg-type]
    if not isinstance(text, str) or not text.strip():
        return None
    valid = _letters_of(choices)
    stripped = text.strip()
    # No article removal here: "(A) dog" must not become "dog" (option B's text).
    norm = _light(stripped)
    if choices:
        by_text = [valid[i] for i, c in enumerate(choices) if norm and _light(c) == norm]
        if len(by_text) == 1:
            return frozenset(by_text)
    single = re.fullmatch(r"(?:option\s+|answer\s*:?\s*)?\(?([A-Za-z])\)?(?:[.:)]\s*|\s+|$)(.*)", stripped, re.DOTALL)
    if single and single.group(1).upper() in valid and (single.group(2).strip() == "" or choices):
        letter, rest = single.group(1).upper(), single.group(2).strip()
        if not rest:
            return frozenset(letter)
        # "(B) a dog": the text must be that option's text, else the answer contradicts itself.
        if normalize_text(rest) == normalize_text(choices[valid.index(letter)]):  # type: ignore[index]
            return frozenset(letter)
        return None
    # Several letters: only letters and separators ("A, C", "AC", "A and C").
    body = re.sub(r"\band\b", ",", stripped, flags=re.IGNORECASE)
    if re.fullmatch(r"[\sA-Z,;/&()]+", body):
        letters = re.findall(r"[A-Z]", body)
        if letters and all(ch in valid for ch in letters):
            return frozenset(letters)
    return None
