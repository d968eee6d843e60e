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
import unicodedata
from fractions import Fraction

from mmrl.rewards.boxes import drop_format_characters, plain_words

_UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19,
}  # fmt: skip
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9}
_WORD = "|".join([*_UNITS, *_TENS, *_SCALES])
# One run of number words: "one hundred and five", "twenty-one", "two thousand three hundred", "a hundred".
_WORD_RUN = re.compile(
    rf"\b(?:(?:a|an)\s+(?=hundred|thousand|million|billion))?(?:{_WORD})(?:(?:\s+and\s+|[\s-]+)(?:{_WORD}))*\b",
    re.IGNORECASE,
)
# A number may be glued to its unit ("5mm", "90°") but not to other digits or to a word before it ("x2").
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\d_])")
_MAX_DIGITS = 4000  # a number longer than this (digits, or a power of ten in its exponent) is not an answer


class AbsurdNumber(ValueError):
    """A number too large to be an answer (`1e999999999`): rejected before it is built, which could take minutes."""


def _words_value(run: str) -> int | None:
    """The value of one run of number words, or None when it is not one number ("one two" is two numbers)."""
    total, current, last = 0, 0, None  # last: the kind of the previous word, to reject "five three" or "ten one"
    for word in re.findall(r"[a-z]+", run.lower()):
        if word in ("a", "an", "and"):
            current = current or (1 if word != "and" else 0)
            continue
        if word in _UNITS or word in _TENS:
            value = _UNITS.get(word, _TENS.get(word))
            if last in ("unit", "teen") or (last == "tens" and (word in _TENS or value >= 10)):
                return None
            current += value
            last = "tens" if word in _TENS else ("teen" if value >= 10 else "unit")
        else:
            scale = _SCALES[word]
            if scale == 100:
                current = (current or 1) * 100
            else:
                total += (current or 1) * scale
                current = 0
            last = "scale"
    return total + current


def _word_values(text: str) -> list[Fraction]:
    values = []
    for m in _WORD_RUN.finditer(text):
        value = _words_value(m.group(0))
        if value is None:  # "five three": several numbers in a row, each counts on its own
            values.extend(Fraction(_words_value(w) or 0) for w in re.findall(r"[a-z]+", m.group(0).lower())
                          if w not in ("a", "an", "and"))  # fmt: skip
        else:
            values.append(Fraction(value))
    return values


def _to_fraction(token: str) -> Fraction | None:
    """A numeric token as an exact Fraction; raises AbsurdNumber before building a gigantic one."""
    token = token.replace(",", "")
    mantissa, _, exponent = token.lower().partition("e")
    digits = sum(ch.isdigit() for ch in mantissa)
    if digits > _MAX_DIGITS or (exponent and abs(int(exponent)) + digits > _MAX_DIGITS):
        raise AbsurdNumber(token[:40])
    try:
        return Fraction(token)
    except (ValueError, ZeroDivisionError):
        return None


def find_numbers(text: str, words: bool = True) -> list[Fraction]:
    """All numbers in `text` (digits with optional thousands commas, decimals, exponents; number words).

    Raises `AbsurdNumber` for a number with more than 4000 digits (written out or as a power of ten)."""
    values: list[Fraction] = []
    for m in _NUMBER.finditer(text):
        token = m.group(0)
        if not any(ch.isdigit() for ch in token):
            continue
        value = _to_fraction(token)
        if value is not None:
            values.append(value)
    if words:
        values.extend(_word_values(text))
    return values


_LATEX_FRAC = re.compile(r"^([-+]?)\\[dt]?frac\s*\{\s*([-+]?\d+)\s*\}\s*\{\s*(\d+)\s*\}$|^([-+]?)\\[dt]?frac(\d)(\d)$")
_TEXT_WRAPPER = re.compile(r"\\(?:text|mathrm|textrm|mbox|operatorname)\s*\{([^{}]*)\}")


_SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁺", "0123456789-+")
# Scientific notation as typeset: `1.5 \times 10^{3}`, `1.5 \cdot 10^3`, `1.5×10³`, `2*10^-3`; a bare `10^{3}`.
_SCIENTIFIC = re.compile(r"(\d+(?:\.\d+)?)\s*(?:\\times|\\cdot|×|·|\*)\s*10\s*\^\s*(\{\s*[-+]?\d+\s*\}|[-+]?\d+)")
_POWER_OF_TEN = re.compile(r"(?<![\d.])10\s*\^\s*(\{\s*[-+]?\d+\s*\}|[-+]?\d+)")
_SUPERSCRIPT_POWER = re.compile(r"(?<=10)([⁻⁺]?[⁰¹²³⁴⁵⁶⁷⁸⁹]+)")


def _scientific(text: str) -> str:
    """`1.5 \\times 10^{3}` -> `1.5e3`, `10^{-2}` -> `1e-2`: one number, not the three numbers 1.5, 10 and 3."""
    text = _SUPERSCRIPT_POWER.sub(lambda m: "^" + m.group(1).translate(_SUPERSCRIPTS), text)
    text = _SCIENTIFIC.sub(lambda m: f"{m.group(1)}e{m.group(2).strip('{} ')}", text)
    return _POWER_OF_TEN.sub(lambda m: f"1e{m.group(1).strip('{} ')}", text)


def _strip_latex(text: str) -> str:
    """`$5\\text{ cm}$` -> `5 cm`, `\\left(`/`\\right)` -> `(`/`)`: LaTeX dressing around a plain number."""
    text = _scientific(text.replace("\u2212", "-"))  # the Unicode minus sign (typeset, copied answers) is a minus
    # `\$` goes whole first: removing only its `$` left `-\5`, read as 5 (a gold `-\$5` paid "5" and refused "-5")
    text = text.replace("\\$", "").replace("$", "").replace("\\%", "%").replace("\\!", "").replace("\\,", "")
    text = _TEXT_WRAPPER.sub(r" \1", text)
    return text.replace("\\left", "").replace("\\right", "").replace("^\\circ", "°").replace("^{\\circ}", "°").strip()


def parse_number(text, unit: str | None = None, words: bool = True) -> Fraction | None:
    """The single number a short answer states, or None (none, several different ones, or absurdly large)."""
    if isinstance(text, bool):
        return None
    if isinstance(text, (int, Fraction)):
        return Fraction(text) if abs(text) < 10**_MAX_DIGITS else None
    if isinstance(text, float):
        return Fraction(text) if text == text and abs(text) != float("inf") else None
    if not isinstance(text, str):
        return None
    cleaned = _UNIT_POWER.sub("", _strip_latex(text.strip())).rstrip(".").strip()
    if unit:
        cleaned = re.sub(re.escape(unit.strip()) + r"\s*$", "", cleaned, flags=re.IGNORECASE).strip()
    cleaned = cleaned.rstrip("%").strip()
    frac = re.fullmatch(r"([-+]?\d+)\s*/\s*(\d+)", cleaned)
    if frac and int(frac.group(2)) != 0 and len(cleaned) < _MAX_DIGITS:
        return Fraction(int(frac.group(1)), int(frac.group(2)))
    latex_frac = _LATEX_FRAC.match(cleaned)
    if latex_frac:
        sign, num, den = (latex_frac.group(1), latex_frac.group(2), latex_frac.group(3)) if latex_frac.group(2) \
            else (latex_frac.group(4), latex_frac.group(5), latex_frac.group(6))  # fmt: skip
        if int(den) != 0 and len(cleaned) < _MAX_DIGITS:
            return Fraction(int(num), int(den)) * (-1 if sign == "-" else 1)
    try:
        values = set(find_numbers(cleaned, words=words))
    except AbsurdNumber:
        return None
    return values.pop() if len(values) == 1 else None


# Units a number answer may carry, by alias. Numbers in DIFFERENT units never match: no conversion is attempted
# (a "5 m" answer to a "5 cm" question is wrong even though 5 m = 500 cm would make a different number right).
_UNIT_ALIASES = {
    "mm": ("mm", "millimeter", "millimeters", "millimetre", "millimetres"),
    "cm": ("cm", "centimeter", "centimeters", "centimetre", "centimetres"),
    "m": ("m", "meter", "meters", "metre", "metres"),
    "km": ("km", "kilometer", "kilometers", "kilometre", "kilometres"),
    "in": ("in", "inch", "inches"), "ft": ("ft", "foot", "feet"), "yd": ("yd", "yard", "yards"),
    "mi": ("mi", "mile", "miles"),
    "mg": ("mg", "milligram", "milligrams"), "g": ("g", "gram", "grams"),
    "kg": ("kg", "kilogram", "kilograms"), "lb": ("lb", "lbs", "pound", "pounds"),
    "ml": ("ml", "milliliter", "milliliters", "millilitre", "millilitres"),
    "l": ("l", "liter", "liters", "litre", "litres"),
    "s": ("s", "sec", "second", "seconds"), "min": ("min", "mins", "minute", "minutes"),
    "h": ("h", "hr", "hrs", "hour", "hours"), "day": ("day", "days"), "year": ("year", "years", "yr", "yrs"),
    "deg": ("°", "deg", "degree", "degrees"), "rad": ("rad", "radian", "radians"),
    "%": ("%", "percent", "percentage"),
    "$": ("dollar", "dollars", "usd"),
}  # fmt: skip
_UNIT_OF = {alias: unit for unit, aliases in _UNIT_ALIASES.items() for alias in aliases}
_UNIT_TAIL = re.compile(r"(°|%|[A-Za-z]+)\s*(?:\^\s*\{?\s*([23])\s*\}?|([²³]))?\s*\.?\s*$")
_UNIT_POWER = re.compile(r"(?<=[A-Za-z])\s*(?:\^\s*\{?\s*[23]\s*\}?|[²³])")


def number_unit(text) -> str | None:
    """The unit written right after the number that ends a short answer (`5 cm`, `5\\text{ cm}^2`, `90°`), or None.

    Returned in canonical form with its power (`cm^2`); an unknown word is returned lower-cased as written, so two
    different unknown units still differ."""
    if not isinstance(text, str) or len(text) > 200:
        return None
    cleaned = _strip_latex(text.strip())
    tail = _UNIT_TAIL.search(cleaned)
    if not tail or not re.search(r"\d\s*$", cleaned[: tail.start()]):
        return None
    word = tail.group(1)
    unit = _UNIT_OF.get(word, _UNIT_OF.get(word.lower(), word.lower()))
    power = (tail.group(2) or tail.group(3) or "").replace("²", "2").replace("³", "3")
    return f"{unit}^{power}" if power else unit


# Full-width ASCII forms (U+FF01-U+FF5E: `５`, `Ｂ`, `／`) and the ideographic space. NFKC maps them to ASCII, but NFKC
# over the whole answer would also turn `x²` into `x2` and `2³` into `23`: only these characters are folded.
_FULLWIDTH = re.compile("[\uff01-\uff5e\u3000]")
# Vulgar fractions (`½`, `¾`, `⅓`...): NFKC writes them with U+2044 FRACTION SLASH (`1⁄2`), which nothing reads.
_VULGAR = re.compile("[\u00bc-\u00be\u2150-\u215e]")
_FRACTION_SLASH = re.compile("(?<=\\d)\u2044(?=\\d)")
_TRAILING_PERIOD = re.compile(r"(?<=[\d}])\.\s*$")  # "5." / "x = 5." / "\frac{1}{2}.": a sentence's full stop
_DEGREE = re.compile(r"(?<=[\d}])\s*°")


def normalize_forms(text: str) -> str:
    """Fold typographic variants that cannot change an answer's meaning: full-width forms, the Unicode minus,
    invisible format characters (zero-width space, BOM, bidi marks).

    >>> normalize_forms("５，Ｂ−１")
    '5,B-1'
    """
    text = _FULLWIDTH.sub(lambda m: unicodedata.normalize("NFKC", m.group(0)), text)
    # Zero-width and other format characters print nothing: `4\u200b` is 4, `o\u200br` is "or".
    return drop_format_characters(text).replace("\u2212", "-")


def numeric_forms(text: str) -> str:
    """`normalize_forms`, then the number spellings a math answer may use: a vulgar fraction as `\\frac{a}{b}`
    (math-verify reads `1\\frac{1}{2}` as the mixed number 3/2, so `1½` keeps its meaning), the degree sign as
    `^{\\circ}` (math-verify's own spelling: `5°` then equals a gold `5^\\circ`), and one full stop after a final
    number dropped. Only a FINAL period goes: `5.5` stays 5.5 and `5. 6` stays a list.

    >>> numeric_forms("５."), numeric_forms("½"), numeric_forms("30°"), numeric_forms("5. 6"), numeric_forms("5.5")
    ('5', '\\\\frac{1}{2}', '30^{\\\\circ}', '5. 6', '5.5')
    """

    def vulgar(m: re.Match) -> str:
        num, _, den = unicodedata.normalize("NFKC", m.group(0)).partition("\u2044")
        return f"\\frac{{{num}}}{{{den}}}" if den else m.group(0)

    text = _VULGAR.sub(vulgar, normalize_forms(text).strip())
    text = _FRACTION_SLASH.sub("/", text)  # "1⁄2" typed with U+2044 between digits
    return _DEGREE.sub(lambda _: "^{\\circ}", _TRAILING_PERIOD.sub("", text))  # a function: no escapes in the result


def normalize_text(text: str) -> str:
    """Lowercase, drop punctuation and articles, collapse whitespace (SQuAD-style normalization).

    Articles are dropped only when other words remain: a gold "A" (an option letter, a grade) must not become "",
    which would make it unscorable or, worse, equal to every other article-only answer."""
    text = "".join(ch for ch in str(text).lower() if ch not in string.punctuation)
    words = text.split()
    kept = [w for w in words if w not in ("a", "an", "the")]
    return " ".join(kept or words)


def _light(text: str) -> str:
    return " ".join("".join(ch for ch in str(text).lower() if ch not in string.punctuation).split())


# Informal spellings models write ("Yep.", "Nope, it is not."): they were read as no answer, a correct "Nope" scored 0.
_YES = {"yes", "true", "correct", "right", "y", "yep", "yeah", "yup"}
_NO = {"no", "false", "incorrect", "wrong", "n", "nope", "nah"}
# Hedges and non-answers: "yes or not", "maybe yes", "N/A", "not sure", "I don't know", "it depends". Before this rule
# "yes or not" read as yes, and "N/A" as no (its "n").
_YES_NO_HEDGE = re.compile(
    r"\b(?:or|either|neither|nor|maybe|perhaps|possibly|probably|likely|unsure|unknown|unclear|uncertain|undetermined|"
    r"indeterminate|depends|not\s+sure|(?:do\s*n[o']?t|cannot|can'?t)\s+(?:know|tell|say|determine|be\s+determined))\b"
    r"|\bn\s*/\s*a\b",
    re.IGNORECASE,
)
_NEGATIONS = {"not", "isn't", "aren't", "wasn't", "weren't", "doesn't", "don't", "didn't", "isnt", "arent", "dont", "never"}


def parse_yes_no(text) -> str | None:
    """'yes' / 'no', or None when neither or both are said ("yes or no" is a hedge, not an answer), or the answer is a
    hedge or a non-answer ("yes or not", "N/A", "not sure"). A negation flips the word after it ("not correct" is
    no); a negation before no yes/no word says no ("No, it is not."; "Yes, it is not" says both: None). `y` / `n`
    count only as a one-word answer."""
    if isinstance(text, bool):
        return "yes" if text else "no"
    if not isinstance(text, str):
        return None
    text = plain_words(text)
    if _YES_NO_HEDGE.search(text):
        return None
    words = re.findall(r"[a-z]+(?:'[a-z]+)?", text.lower())
    polarities = set()
    for i, word in enumerate(words):
        negated = i > 0 and words[i - 1] in _NEGATIONS
        if word in ("y", "n") and len(words) > 1:
            continue
        if word in _YES:
            polarities.add("no" if negated else "yes")
        elif word in _NO:
            polarities.add("yes" if negated else "no")
        elif word in _NEGATIONS and (i + 1 == len(words) or not (words[i + 1] in _YES or words[i + 1] in _NO)):
            polarities.add("no")
    return polarities.pop() if len(polarities) == 1 else None


_MC_LEAD = re.compile(
    r"^(?:(?:so|thus|therefore|hence)\s*,?\s+)?(?:the\s+)?(?:(?:correct|final|right|best)\s+)?"
    r"(?:answer|option|choice)s?(?:\s+(?:is|are|would\s+be))?\s*(?:[:：-]\s*)?(?=[(\[]?[A-Za-z](?![a-z]))",
    re.IGNORECASE,
)


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
    # As models write it: `**B**`, `\\text{B}`, `$B$`, "Option B", "Answer: B", "The correct answer is (B)."
    stripped = plain_words(text).replace("*", " ").strip()
    stripped = re.sub(r"\s+(?=[.!)]$)", "", stripped)  # "**B**." leaves "B ." once the bold marks are gone
    for _ in range(2):  # "The answer is option B"
        stripped = _MC_LEAD.sub("", stripped, count=1).strip()
    # No article removal here: "(A) dog" must not become "dog" (option B's text).
    norm = _light(stripped)
    if choices:
        by_text = [valid[i] for i, c in enumerate(choices) if norm and _light(c) == norm]
        if len(by_text) == 1:
            return frozenset(by_text)
    single = re.fullmatch(r"[(\[]?([A-Za-z])[)\]]?(?:[.:)]\s*|\s+|$)(.*)", stripped, re.DOTALL)
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
