"""The `math` task: math-verify (`verify(gold, pred)` in that order), with mmrl's rules around it.

- Bare LaTeX golds and answers are read whole as LaTeX; absurd answers (`10^{10^{10}}`) are rejected before parsing.
- A list of numbers (`1, 2, 3`, `-2; 2`) is read as the set it names, gold or answer: math-verify's number path read
  it as its LAST number, so one element of a list gold earned the whole reward. A set gold `\\{1, 2, 3\\}` and the list
  answer `1, 2, 3` (or `3, 2, 1`) then name the same set.
- `\\fbox{}` / `\\framebox{}` are read as `\\boxed{}` (math-verify knows only `\\boxed`, mmrl's readers all three), and
  a box follows the one-box rules of `boxes.read_box` (`not \\boxed{4}`, `3 or \\boxed{4}`: 0).
- A number the answer rules out is not its answer: `5, not 4` and `5 (not 4)` answer 5 (`boxes.stated`), a bound
  (`3 or more`, `more than 3`) answers nothing, `4 \\text{ and } 5` is a list; LaTeX text wrappers no longer hide
  the words.
- Numbers compare RELATIVELY (their first 6 significant digits): math-verify rounds to 6 decimals, so
  `1.5 \\times 10^{-19}` equalled `2 \\times 10^{-19}`; a match it finds between numbers farther apart is refused.
  `2e-19` is read as the number it names (math-verify read it as 2, so `2e5` equalled it).
- A currency sign (`\\$18.90`, `$18.90`) is not part of the number: such a gold was unparsable (the item unscorable)
  and a `\\$` answer against a plain gold scored 0.

>>> verify_math("2, -2", "-2, 2"), verify_math("2", "-2, 2"), verify_math("1, 2, 3", "\\\\{1, 2, 3\\\\}")
(1.0, 0.0, 1.0)
>>> verify_math("1.5 \\\\times 10^{-19}", "2 \\\\times 10^{-19}"), verify_math("\\\\$18.90", "18.9")
(0.0, 1.0)
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from functools import lru_cache

from mmrl.rewards.boxes import box_count, final_clause, plain_words, read_box, stated
from mmrl.rewards.limits import MAX_TEXT_CHARS, absurd_math
from mmrl.rewards.parsing import AbsurdNumber, find_numbers, numeric_forms


def _math_configs():
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    return [LatexExtractionConfig(), ExprExtractionConfig()]


# Text math-verify should read as it is: delimited LaTeX ($...$, \(...\), \[...\], \boxed{...}) or prose around it.
_DELIMITED = re.compile(r"\$|\\\(|\\\[|\\boxed|\\fbox")
# A plain number ("1,000.99", "-5", "1000,99", "12%"): math-verify's number path reads thousands separators right.
_PLAIN_NUMBER = re.compile(r"[-+]?\d[\d,\s]*(?:\.\d+)?(?:[eE][-+]?\d+)?\s*%?")
# A word of 3+ letters that is not a LaTeX command: the text is prose ("the answer is 5 apples"), not bare LaTeX.
_PROSE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}")
_NUMBER = r"[-+]?\d+(?:\.\d+)?"
# A list of numbers: separated by ";", by ", " (a comma then a space), or by commas between 3+ numbers ("1,2,3");
# "1,000" / "1,000,000" (thousands) and "1000,99" (a decimal comma) are one number.
_NUMBER_LIST = re.compile(rf"\s*{_NUMBER}(?:\s*(?:;|,\s+)\s*{_NUMBER})+\s*|\s*{_NUMBER}(?:,{_NUMBER}){{2,}}\s*")
_THOUSANDS = re.compile(r"\s*[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?\s*")


_E_NOTATION = re.compile(r"([-+]?\d+(?:\.\d+)?)[eE]([-+]?\d+)")


def _is_number_list(text: str) -> bool:
    return bool(_NUMBER_LIST.fullmatch(text)) and not _THOUSANDS.fullmatch(text)


def _parse_math(text: str) -> list:
    """Parse an answer, LaTeX first: bare LaTeX (`2\\sqrt{3}`, `[0,1]`, `x<3`, `y=2x+1`) is read whole as LaTeX.

    math-verify's default extraction of undelimited text reads the first number it meets (`2\\sqrt{3}` -> 2) and the
    equation `3*x-1*y+13=0` as its right side 0 (its issue #60). Delimited text and plain numbers keep math-verify's
    own extraction; a list of numbers is read as the set it names; undelimited prose falls back to math-verify's
    extraction, then to the whole text boxed (its issue #70).
    """
    # Our own timeout (safe.py) replaces math-verify's SIGALRM one, which fails off the main thread.
    from math_verify import LatexExtractionConfig, parse

    text = text.strip()
    exponent = _E_NOTATION.fullmatch(text)
    if exponent:  # math-verify reads `2e-19` as 2 (and `2e5` too): written as LaTeX, it is the number it names
        text = f"{exponent.group(1)} \\times 10^{{{exponent.group(2)}}}"
        if absurd_math(text):  # `1e999999999`: sympy would build the number
            return []
    if _is_number_list(text):
        return parse("$" + text.replace(";", ",") + "$", [LatexExtractionConfig()], parsing_timeout=None)
    if _DELIMITED.search(text) or _PLAIN_NUMBER.fullmatch(text):
        return parse(text, _math_configs(), parsing_timeout=None)
    if not _PROSE.search(text):
        parsed = parse("$" + text + "$", [LatexExtractionConfig()], parsing_timeout=None)
        if parsed:
            return parsed
    parsed = parse(text, _math_configs(), parsing_timeout=None)
    if not parsed and "\\" in text:
        parsed = parse("\\boxed{" + text + "}", _math_configs(), parsing_timeout=None)
    return parsed


# `\boxed {4}` (a space before the brace, which models write) too: math-verify reads only `\\boxed{`, so a whole
# solution ending in `\boxed {4}` scored 0 while mmrl's own box readers took 4.
_OTHER_BOX = re.compile(r"\\(?:fbox|framebox\s*(?:\[[^\]{}]*\])?|boxed(?=\s))\s*\{")
# A currency sign before a number: `\$18.90`, `\$ 5`; a lone `$` before a digit when the text has one `$` (no pair).
_ESCAPED_DOLLAR = re.compile(r"\\\$\s*(?=[-+]?\d)")


_SUPERSCRIPT_TEN = re.compile("(?<=10)([\u207b\u207a]?[\u2070\u00b9\u00b2\u00b3\u2074-\u2079]+)")
_SUPERSCRIPTS = str.maketrans("\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079\u207b\u207a",
                              "0123456789-+")


def math_forms(text: str) -> str:
    """`numeric_forms`, then `\\fbox{` as `\\boxed{`, currency signs dropped and typed scientific notation
    (`1.5×10³`) in LaTeX, which math-verify reads (see the module docstring)."""
    text = _OTHER_BOX.sub(lambda _: "\\boxed{", numeric_forms(text))
    text = _SUPERSCRIPT_TEN.sub(lambda m: "^{" + m.group(1).translate(_SUPERSCRIPTS) + "}", text)
    text = re.sub(r"(?<=\d)\s*\u00d7\s*(?=10\^)", r" \\times ", text)
    text = _ESCAPED_DOLLAR.sub("", text)
    if text.count("$") == 1:
        text = re.sub(r"\$\s*(?=[-+]?\d)", "", text)
    return text


def _answer_text(text: str) -> str | None:
    """The part of a math answer to parse, or None when it is absurd (gigantic numbers, see limits.py).

    A text longer than an answer (a whole solution: tags=None, or a gold that is a worked solution) is cut to its
    last `MAX_TEXT_CHARS`, where math-verify looks for the final answer anyway: parsing a megabyte takes minutes."""
    text = text.strip()[-MAX_TEXT_CHARS:]
    return None if absurd_math(text, max_chars=MAX_TEXT_CHARS) else text


@lru_cache(maxsize=4096)
def parse_math_gold(gold: str) -> tuple:
    """Parsed gold, or () when it does not parse or is absurd. Cached: a gold is parsed once per process.

    math-verify keeps the raw string next to the expression it parsed, and returns the string ALONE when it parsed
    nothing (`[`, `\\frac{`): such a gold would be compared as text, scoring every real answer 0 (and the same
    broken text 1). A gold with no parsed expression is unusable (None), never a silent 0.
    """
    text = _answer_text(gold)
    text = math_forms(text) if text else None
    parsed = tuple(_parse_math(text)) if text and not absurd_math(text) else ()
    return parsed if any(not isinstance(item, str) for item in parsed) else ()


_HEDGE_WORD = re.compile(r"\b(?:or|either|maybe|possibly|perhaps)\b", re.IGNORECASE)


def _prose_hedge(text: str) -> bool:
    """Prose offering alternatives between different numbers ("either 5 or 6", "maybe 5, maybe 6").

    math-verify reads ONE number out of undelimited prose, so such a hedge was paid whenever that number happened to
    be right. Bare LaTeX (`x = 2 or x = -2`) and delimited answers are read whole and are not affected."""
    if _DELIMITED.search(text):
        return False
    words = plain_words(text)
    # prose, or words LaTeX wrapped (`3 \text{ (or 5)}`): bare LaTeX such as `x = 2 or x = -2` is read whole
    if not ((_PROSE.search(words) or words != text) and _HEDGE_WORD.search(words)):
        return False
    try:
        return len(set(find_numbers(words, words=False))) > 1
    except AbsurdNumber:
        return True


# A value in its own math span: `$4$`, `$x = 4$`, `\(4\)`. Two different ones with a hedge word between them in the final
# clause ("The answer is $4$ \text{or} $5$", "$4$, or maybe $5$"): math-verify read the first alone and paid it
# (while "$4$ or $5$" it reads as the set {4, 5}).
_SPAN_VALUE = re.compile(r"(?:\$|\\\()\s*(?:[A-Za-z]\s*=\s*)?([-+]?\d+(?:\.\d+)?)\s*(?:\$|\\\))")


def _span_hedge(text: str, gold: str) -> bool:
    clause = final_clause(text)
    values = set(_SPAN_VALUE.findall(clause))
    if len(values) < 2 or not _HEDGE_WORD.search(plain_words(clause)):
        return False
    try:
        return len(set(find_numbers(str(gold), words=False))) == 1
    except AbsurdNumber:
        return True


# Separators of a list: "; ", ", " (a comma then a space: "1000,99" is a decimal comma), " and ", " or ", a space.
_BARE_LIST = re.compile(rf"\s*{_NUMBER}(?:(?:\s*;\s*|\s*,\s+|\s+(?:and|or)\s+|\s+){_NUMBER})+\s*\.?\s*",
                        re.IGNORECASE)


def _list_hedge(text: str, gold: str) -> bool:
    """A bare list of different numbers ("3, 5", "3 5", "3 and 5", `3 \\text{ and } 5`) against a gold that is one
    number: math-verify read it as a set or as its last number, so a policy listing candidates was paid when one of
    them was right. "1,000" (a thousands separator) is one number, not a list."""
    text = plain_words(text)
    if not _BARE_LIST.fullmatch(text) or _THOUSANDS.fullmatch(text):
        return False
    try:
        if len(set(find_numbers(str(gold), words=False))) != 1:
            return False
        return len(set(find_numbers(text, words=False))) > 1
    except AbsurdNumber:
        return True


SIGNIFICANT_DIGITS = 6


def _significant(value) -> Decimal:
    exact = Decimal(str(value))
    if not exact:
        return exact
    return exact.quantize(Decimal(1).scaleb(exact.adjusted() - SIGNIFICANT_DIGITS + 1), rounding=ROUND_HALF_EVEN)


def _too_far(gold_parsed, pred_parsed) -> bool:
    """Two plain numbers math-verify called equal after rounding to 6 DECIMALS that differ in their first 6
    SIGNIFICANT digits: a relative tolerance (`1.5 \\times 10^{-19}` is not `2 \\times 10^{-19}`; `0.333333` still
    equals `\\frac{1}{3}`)."""
    import sympy

    gold, pred = gold_parsed[0], pred_parsed[0]
    if not all(isinstance(x, sympy.Expr) and x.is_number and x.is_real for x in (gold, pred)):
        return False
    try:
        return _significant(sympy.N(gold, 30)) != _significant(sympy.N(pred, 30))
    except (TypeError, ValueError, ArithmeticError, InvalidOperation):
        return False


def verify_math(pred: str, gold: str) -> float | None:
    """1.0 / 0.0 for `pred` against `gold` (math-verify, `verify(gold, pred)`); None only when the gold is unusable.

    An absurd prediction (`10^{10^{10}}`, a megabyte of text) is wrong without being parsed."""
    from math_verify import verify

    gold_parsed = parse_math_gold(str(gold).strip())
    if not gold_parsed:
        return None
    text = _answer_text(pred) if pred else None
    text = math_forms(text) if text else None  # "5." / "５" / "5°" / "½" / "\$5" / "\fbox": see math_forms
    if not text or absurd_math(text):
        return 0.0
    # "not \boxed{4}", "3 or \boxed{4}": 0. Several different boxes are math-verify's to read (a set, or the "final
    # answer" it names): an answer BLOCK with several boxes never gets here (extraction gives no answer).
    if read_box(text, sentence_only=True).problem == "hedged box":
        return 0.0
    if not box_count(text):  # no box: what the final clause rules out is deleted
        text = text.strip()
        clause = final_clause(text)
        said = stated(clause)  # "5, not 4" -> "5"; "3 or more", "more than 3": a bound, which math-verify read as 3
        if said is None:
            return 0.0
        text = text[: len(text) - len(clause)] + said
        if not text.strip():
            return 0.0
    if _prose_hedge(text) or _list_hedge(text, gold) or _span_hedge(text, gold):
        return 0.0
    pred_parsed = _parse_math(text)
    if not pred_parsed or not verify(list(gold_parsed), pred_parsed, timeout_seconds=None):
        return 0.0
    return 0.0 if _too_far(gold_parsed, pred_parsed) else 1.0
