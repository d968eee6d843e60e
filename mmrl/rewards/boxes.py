"""One boxed answer per completion, as for answer tags: several boxes, or words around the box that rule it out or
hedge it, are no answer.

The last `\\boxed{}` used to win, so a policy could box two answers (`\\boxed{3} \\boxed{4}`), box one and name another
(`3 or \\boxed{4}`, `\\boxed{4}, or 5`, `3, \\boxed{4}`) or box one it rules out (`not \\boxed{C}`, `\\boxed{C} is
wrong`) and be paid whenever the box held the gold. Rules, for every reward and task that reads boxes:

- more than one box command (`\\boxed`, `\\fbox`, `\\framebox`, nested ones included) is no answer;
- before the box (in its own sentence when the region is a whole solution; the whole region inside an answer block),
  a negation (`not`, `never`, `isn't`, ...) or an alternative (`or`, `either`, `maybe`, ...) is no answer, and so is
  another candidate (a number, an option letter, yes/no) that the box does not hold; an equation's left side
  (`2 + 2 = \\boxed{4}`) is working, not a candidate;
- after the box, up to the region's end, the same words or a different candidate are no answer (`\\boxed{24}. The
  final answer is $24$.` repeats the box and is kept).

Words are read after LaTeX text wrappers (`\\text{ or }`), markdown emphasis, invisible characters and look-alike
letters from other scripts (Cyrillic `о` in `оr`) are folded, so none of them hides a word from these rules.

>>> read_box("The answer is \\\\boxed{4}.").content, read_box("3 or \\\\boxed{4}").problem
('4', 'hedged box')
>>> read_box("\\\\boxed{3} \\\\boxed{4}").problem, read_box("2 + 2 = \\\\boxed{4}").content
('several boxes', '4')
"""

from __future__ import annotations

import re
import unicodedata
from typing import NamedTuple

# Box commands a reader or math-verify may take as the answer. `\framebox[2cm]{4}` may carry an optional width.
BOX_COMMAND = re.compile(r"\\(?:boxed|fbox|framebox)(?![A-Za-z])")
_BOX_OPEN = re.compile(r"\\(?:boxed|fbox|framebox)\s*(?:\[[^\]{}]*\]\s*)?\{")

# Look-alike letters from other scripts, folded to Latin before words are read: `оr` (Cyrillic o) is `or`, `Β` (Greek
# Beta) is the option letter `B`. Only letters that render like a Latin one.
_CONFUSABLES = str.maketrans(
    "АВЕКМНОРСТХаеорсухіјѕԁԛԝΑΒΕΖΗΙΚΜΝΟΡΤΥΧονᴀʏ",
    "ABEKMHOPCTXaeopcyxijsdqwABEZHIKMNOPTYXovAy",
)
# Characters that print nothing: format characters (zero-width space/joiners, BOM, bidi marks), fillers, braille blank.
_FILLERS = {"\u115f", "\u1160", "\u3164", "\uffa0", "\u2800", "\u034f"}


def invisible(ch: str) -> bool:
    """A character that prints nothing: a format character (Cf: zero-width space, BOM, bidi marks), a control, a
    combining mark on its own, whitespace, or a filler (Hangul fillers, the braille blank)."""
    return ch.isspace() or ch in _FILLERS or unicodedata.category(ch) in ("Cf", "Cc", "Mn", "Me", "Zs", "Zl", "Zp")


def is_blank(text: str) -> bool:
    """True when `text` prints nothing: empty, whitespace, or only invisible characters (`<answer>\\u200b</answer>`)."""
    return all(invisible(ch) for ch in text)


_FULLWIDTH = re.compile("[\uff01-\uff5e\u3000]")


def fold_letters(text: str) -> str:
    """Drop invisible format characters, fold full-width forms (`ｏｒ`) and look-alike letters to Latin, for reading
    words and option letters."""
    text = "".join(ch for ch in text if not (ch in _FILLERS or unicodedata.category(ch) == "Cf"))
    text = _FULLWIDTH.sub(lambda m: unicodedata.normalize("NFKC", m.group(0)), text)
    return text.translate(_CONFUSABLES).replace("\u2019", "'")


_WRAPPER = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox|operatorname|emph)\s*\{([^{}]*)\}")


def plain_words(text: str) -> str:
    """`4 \\text{ and } 5` -> `4  and  5`: LaTeX text wrappers, math delimiters and markdown emphasis removed."""
    text = _WRAPPER.sub(r" \1 ", fold_letters(text))
    for mark in ("$", "\\(", "\\)", "\\[", "\\]", "**", "__", "`"):
        text = text.replace(mark, " ")
    return text.replace("\\,", " ").replace("\\;", " ").replace("\\quad", " ").replace("~", " ")


_NEGATION = r"not|never|neither|nor|none|cannot|without|except|excluding|instead|rather|unlike|wrong|incorrect"
_ALTERNATIVE = r"or|either|maybe|perhaps|possibly|probably|likely|unsure|versus|vs|alternatively|otherwise"
_CONTRACTED = r"\w+n't|isnt|arent|wasnt|werent|dont|doesnt|didnt|cant|wont|couldnt|shouldnt|wouldnt|aint"
_HEDGE = re.compile(rf"\b(?:{_NEGATION}|{_ALTERNATIVE}|{_CONTRACTED})\b", re.IGNORECASE)
_CANDIDATE = re.compile(
    r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?![\w])"  # a number
    r"|(?<![A-Za-z'])(?!(?:A|I)\s+[a-z])[A-Z](?![A-Za-z'])"  # an option letter (not the article "A dog", not "I think")
    r"|(?i:\b(?:yes|no|true|false)\b)"
)
_POWER = re.compile(r"\^\s*\{?\s*[-+]?\d+\s*\}?")  # `cm^2`, `10^{3}`: an exponent is not a candidate answer
# The working before the box: an equation's left side ending in `=` (`2 + 2 = `, `x = `, `\frac{a}{b} =`).
_EQUATION_TAIL = re.compile(r"[\w\s+\-*/^().{}\\]*(?:=|\\approx|\\equiv)\s*$")
# Where the working before a final box ends: a sentence's end, a new line, or a conclusion ("..., so", "therefore").
_SENTENCE_END = re.compile(r"[.!?](?=\s)|\n|\b(?:so|therefore|thus|hence)\b", re.IGNORECASE)


def _candidates(text: str) -> set[str]:
    found = set()
    for m in _CANDIDATE.finditer(_POWER.sub(" ", text)):
        token = m.group(0)
        found.add(token.lower() if token.isalpha() and len(token) > 1 else token.lstrip("+"))
    return found


def _hedged(before: str, after: str, content: str) -> bool:
    own = _candidates(plain_words(content))
    before, after = plain_words(before), plain_words(after)
    if _HEDGE.search(before) or _HEDGE.search(after):
        return True
    before = _EQUATION_TAIL.sub("", before)
    return bool((_candidates(before) | _candidates(after)) - own)


class BoxReading(NamedTuple):
    content: str | None  # the one box's content (None: no box, an unclosed one, or a problem)
    problem: str | None  # "several boxes" | "hedged box" | None


def _box_span(text: str, start: int) -> tuple[int, int] | None:
    """(content start, content end) of the box command at `start`, by balanced braces; None when unclosed."""
    opened = _BOX_OPEN.match(text, start)
    if not opened:
        return None
    depth = 1
    for i in range(opened.end(), len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return opened.end(), i
    return None


def box_count(text: str) -> int:
    return len(BOX_COMMAND.findall(text))


def read_box(region: str, sentence_only: bool = False) -> BoxReading:
    """The one box of an answer region and whether its surroundings make it no answer (see the module docstring).

    `sentence_only=True` reads only the box's own sentence before it (from its last "so" / "therefore" / "thus" /
    "hence" on), for a region that is a whole solution (no answer tags: the working before the conclusion is not an
    answer); the text after the box is always read to the end.
    """
    commands = list(BOX_COMMAND.finditer(region))
    if not commands:
        return BoxReading(None, None)
    if len(commands) > 1:
        return BoxReading(None, "several boxes")
    span = _box_span(region, commands[0].start())
    if span is None:
        return BoxReading(None, None)
    before, content, after = region[: commands[0].start()], region[span[0] : span[1]], region[span[1] + 1 :]
    if sentence_only:
        before = _SENTENCE_END.split(before)[-1]
    if _hedged(before, after, content):
        return BoxReading(None, "hedged box")
    return BoxReading(content.strip(), None)


__all__ = ["BOX_COMMAND", "BoxReading", "box_count", "fold_letters", "invisible", "is_blank", "plain_words", "read_box"]
