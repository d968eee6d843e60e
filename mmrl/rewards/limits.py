"""Cheap checks that reject hostile math answers before a verifier tries to evaluate them.

sympy evaluates numbers eagerly: `10^{10^{10}}` or `(10^{100})!` would be computed digit by digit in C, where no timer
can interrupt it. These checks look only at the text, in linear time, and flag an answer as absurd when:

- it is longer than `max_chars` (callers cut whole solutions to their last `MAX_TEXT_CHARS` first);
- it nests brackets `( [ {` more than `MAX_DEPTH` deep;
- it writes an integer with more than `MAX_DIGITS` digits;
- a power with a numeric base has more than `MAX_RESULT_DIGITS` digits (estimated as exponent * log10(base)), or a
  numeric exponent that is itself a tower beyond 10^6;
- a factorial's numeric argument exceeds `MAX_FACTORIAL`.

An absurd PREDICTION is simply wrong (0.0); an absurd GOLD is unusable (None).

>>> absurd_math("10^{10^{10}}"), absurd_math("(10^{100})!"), absurd_math("2^{10}"), absurd_math("x^{2}+1")
('power with about 1e+10 digits', 'factorial of about 1e+100', None, None)
"""

from __future__ import annotations

import math
import re

MAX_ANSWER_CHARS = 1000  # longest bracket group the operand scanners walk
MAX_TEXT_CHARS = 6000  # longest text handed to a verifier
MAX_DEPTH = 6  # deepest bracket nesting: math-verify's LaTeX parser slows down steeply with depth ((((((((1)))))))) ~1s)
MAX_DIGITS = 1000
MAX_RESULT_DIGITS = 100_000
MAX_FACTORIAL = 10_000

_DIGIT_RUN = re.compile(rf"\d{{{MAX_DIGITS + 1},}}")
_BRACKET = re.compile(r"[()\[\]{}]")
_TOKEN = re.compile(r"\d+(?:\.\d+)?|\\(?:cdot|times)|[-+*/^!(){}\[\]]|\S")


def _numeric_value(tokens: list[str]) -> float | None:
    """Value of a token list that is a plain numeric expression of digits, + - * / ^ ! and brackets, else None.

    Returns `inf` for values beyond float range (they are only compared against limits)."""
    pos = 0

    def atom() -> float | None:
        nonlocal pos
        if pos >= len(tokens):
            return None
        tok = tokens[pos]
        if tok in ("(", "{", "["):
            pos += 1
            value = expr()
            if pos < len(tokens) and tokens[pos] in (")", "}", "]"):
                pos += 1
            return value
        if tok[0].isdigit():
            pos += 1
            return float(tok) if len(tok) < 300 else math.inf
        if tok in ("-", "+"):
            pos += 1
            value = atom()
            return None if value is None else (-value if tok == "-" else value)
        return None

    def postfix() -> float | None:
        nonlocal pos
        value = atom()
        while value is not None and pos < len(tokens) and tokens[pos] in ("^", "!"):
            if tokens[pos] == "!":
                pos += 1
                value = math.inf if value > 170 else float(math.gamma(value + 1)) if value >= 0 else None
            else:
                pos += 1
                exponent = atom()
                if exponent is None:
                    return None
                value = _power(value, exponent)
        return value

    def expr() -> float | None:
        nonlocal pos
        value = postfix()
        while value is not None and pos < len(tokens) and tokens[pos] in ("+", "-", "*", "/", "\\cdot", "\\times"):
            op = tokens[pos]
            pos += 1
            other = postfix()
            if other is None:
                return None
            with_inf = math.isinf(value) or math.isinf(other)
            if op in ("+", "-"):
                value = value + other if op == "+" else value - other
            elif op == "/":
                value = value / other if other else None
            else:
                value = value * other
            if value is not None and with_inf and math.isnan(value):
                value = math.inf
            if value is None:
                return None
        return value

    value = expr()
    return value if pos == len(tokens) else None


def _power(base: float, exponent: float) -> float:
    if abs(base) <= 1 or exponent <= 0:
        return 0.0 if abs(base) < 1 and exponent > 0 else 1.0
    digits = exponent * math.log10(abs(base)) if math.isfinite(exponent) else math.inf
    return math.inf if digits > 300 else base**exponent


def _operand_after(text: str, i: int) -> str:
    """The exponent operand starting at i: a braced group, or one token."""
    while i < len(text) and text[i] == " ":
        i += 1
    if i < len(text) and text[i] == "{":
        depth = 0
        for j in range(i, min(len(text), i + MAX_ANSWER_CHARS)):
            depth += text[j] == "{"
            depth -= text[j] == "}"
            if depth == 0:
                return text[i : j + 1]
        return text[i:]
    m = re.match(r"\d+|\\?[A-Za-z]+|.", text[i:])
    return m.group(0) if m else ""


def _operand_before(text: str, i: int) -> str:
    """The operand ending just before i: a bracketed group or a number."""
    j = i
    while j > 0 and text[j - 1] == " ":
        j -= 1
    if j > 0 and text[j - 1] in ")}]":
        depth = 0
        for k in range(j - 1, max(-1, j - 1 - MAX_ANSWER_CHARS), -1):
            depth += text[k] in ")}]"
            depth -= text[k] in "({["
            if depth == 0:
                return text[k:j]
        return text[:j]
    m = re.search(r"\d+(?:\.\d+)?$", text[:j])
    return m.group(0) if m else ""


def _value(text: str) -> float | None:
    return _numeric_value(_TOKEN.findall(text.replace("\\left", "").replace("\\right", ""))) if text else None


def absurd_math(text: str, max_chars: int = MAX_TEXT_CHARS) -> str | None:
    """Why `text` is too large to evaluate safely, or None when it looks fine (see the module docstring)."""
    if len(text) > max_chars:
        return f"answer of {len(text)} characters (limit {max_chars})"
    depth = deepest = 0
    for bracket in _BRACKET.finditer(text):
        depth = depth + 1 if bracket.group(0) in "([{" else max(0, depth - 1)
        deepest = max(deepest, depth)
    if deepest > MAX_DEPTH:
        return f"brackets nested {deepest} deep (limit {MAX_DEPTH})"
    if _DIGIT_RUN.search(text):
        return f"number with more than {MAX_DIGITS} digits"
    for m in re.finditer(r"\^|!", text):
        if m.group(0) == "!":
            n = _value(_operand_before(text, m.start()))
            if n is not None and n > MAX_FACTORIAL:
                return f"factorial of about {n:.0e}"
            continue
        exponent = _value(_operand_after(text, m.end()))
        if exponent is None:
            continue
        base = _value(_operand_before(text, m.start()))
        if base is None:  # a symbol raised to a power: only a tower of numbers in the exponent is a problem
            if exponent > 10**6:
                return f"exponent of about {exponent:.0e}"
            continue
        digits = exponent * math.log10(abs(base)) if abs(base) > 1 and exponent > 0 else 0.0
        if digits > MAX_RESULT_DIGITS:
            return f"power with about {digits:.0e} digits"
    return None


__all__ = ["MAX_TEXT_CHARS", "absurd_math"]
