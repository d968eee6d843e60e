"""One boxed answer per completion, as for answer tags: several boxes, or words around the box that rule it out or
hedge it, are no answer.

The last `\\boxed{}` used to win, so a policy could box two answers (`\\boxed{3} \\boxed{4}`), box one and name another
(`3 or \\boxed{4}`, `\\boxed{4}, or 5`, `3, \\boxed{4}`) or box one it rules out (`not \\boxed{C}`, `\\boxed{C} is
wrong`) and be paid whenever the box held the gold. Rules, for every reward and task that reads boxes:

- more than one box command (`\\boxed`, `\\fbox`, `\\framebox`, nested ones included) is no answer, unless they
  all hold the same answer (`\\boxed{840} ... \\boxed{840}`: one answer, repeated);
- before the box (in its own sentence when the region is a whole solution; the whole region inside an answer block),
  a negation (`not`, `never`, `isn't`, ...) or an alternative (`or`, `either`, `maybe`, ...) is no answer, and so is
  another candidate (a number, an option letter, yes/no) that the box does not hold; an equation's left side
  (`2 + 2 = \\boxed{4}`) is working, not a candidate;
- after the box, up to the region's end, the same words or a different candidate are no answer (`\\boxed{24}. The
  final answer is $24$.` repeats the box and is kept);
- a bound is not an answer: "more than \\boxed{3}", "at least", `x < \\boxed{4}`, `\\boxed{4} \\le x`, and neither is a
  value said to differ (`x \\neq \\boxed{4}`) or struck out (`~~\\boxed{B}~~`, `\\sout{\\boxed{4}}`, `<del>`).

`ruled_out` applies the same words (and symbols) to answers without a box: "not 3", "3 or more", "more than 3" named
a number the count, number and math readers took as the answer.

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
from functools import lru_cache
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
# Format characters (category Cf) and fillers as one character class: removed at C speed from a megabyte answer.
_ASTRAL_CF = [(0x110BD, 0x110BD), (0x110CD, 0x110CD), (0x13430, 0x1343F), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A),
              (0xE0001, 0xE0001), (0xE0020, 0xE007F)]
_INVISIBLE_FORMAT = re.compile("[" + "".join(
    re.escape(chr(c)) for c in range(0x10000) if unicodedata.category(chr(c)) == "Cf" or chr(c) in _FILLERS)
    + "".join(f"{chr(a)}-{chr(b)}" for a, b in _ASTRAL_CF) + "]")


def drop_format_characters(text: str) -> str:
    """`text` without zero-width and other format characters (Cf) or fillers: they print nothing."""
    return _INVISIBLE_FORMAT.sub("", text)


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
    text = _FULLWIDTH.sub(lambda m: unicodedata.normalize("NFKC", m.group(0)), drop_format_characters(text))
    return text.translate(_CONFUSABLES).replace("\u2019", "'")


_WRAPPER = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox|operatorname|emph)\s*\{([^{}]*)\}")
# Struck-out text is deleted text: `~~B~~`, `\sout{B}`, `\cancel{4}`, `<del>yes</del>` (a policy striking the answer
# it is paid for was read as giving it).
_STRIKE_MARK = re.compile(r"~~|<(/?)(s|del|strike)>|\\(?:sout|st|cancel|bcancel|xcancel)\s*\{[^{}]*\}", re.IGNORECASE)


def _struck_spans(text: str) -> list[tuple[int, int]]:
    """Spans of struck text: `~~...~~` pairs, `<s>/<del>/<strike>` to their closing tag, `\\sout{...}` (no nested
    braces). One pass over the marks: linear even for a megabyte of unclosed `<s>`."""
    spans, tilde, tags = [], None, {}
    for m in _STRIKE_MARK.finditer(text):
        mark = m.group(0)
        if mark == "~~":
            if tilde is None:
                tilde = m.start()
            else:
                spans.append((tilde, m.end()))
                tilde = None
        elif m.group(2):
            name = m.group(2).lower()
            if not m.group(1):
                tags.setdefault(name, m.start())
            elif name in tags:
                spans.append((tags.pop(name), m.end()))
        else:
            spans.append((m.start(), m.end()))
    return spans


def _delete_struck(text: str) -> str:
    spans = _struck_spans(text)
    if not spans:
        return text
    out, at = [], 0
    for start, end in sorted(spans):
        if start >= at:
            out.append(text[at:start] + " ")
            at = end
    return "".join(out) + text[at:]


def plain_words(text: str) -> str:
    """`4 \\text{ and } 5` -> `4  and  5`: LaTeX text wrappers, math delimiters and markdown emphasis removed, struck
    text (`~~B~~`) deleted."""
    text = _WRAPPER.sub(r" \1 ", _delete_struck(fold_letters(text)))
    for mark in ("$", "\\(", "\\)", "\\[", "\\]", "**", "__", "`"):
        text = text.replace(mark, " ")
    return text.replace("\\,", " ").replace("\\;", " ").replace("\\quad", " ").replace("~", " ")


_NEGATION = r"not|never|neither|nor|cannot|without|except|excluding|instead|rather|unlike|wrong|incorrect"
_ALTERNATIVE = r"or|either|maybe|perhaps|possibly|probably|likely|unsure|versus|vs|alternatively|otherwise"
_CONTRACTED = r"isnt|arent|wasnt|werent|dont|doesnt|didnt|cant|wont|couldnt|shouldnt|wouldnt|aint"
# A bound is not an answer: "more than 3", "at least 4", "other than 5", "up to 6".
_BOUND = r"(?:more|less|fewer|greater|smaller|larger|bigger|higher|lower|other)\s+than|at\s+(?:least|most)|up\s+to"
_HEDGE = re.compile(rf"\b(?:{_NEGATION}|{_ALTERNATIVE}|{_CONTRACTED}|{_BOUND})\b|(?<=\w)n't\b", re.IGNORECASE)
# Symbols that say "not" or bound the value: `x \neq \boxed{4}`, `\neg`, `x < \boxed{4}`, `\boxed{4} \le x`.
_NOT_SYMBOL = re.compile(r"\\(?:neq|ne|not|notin|neg|lnot)(?![A-Za-z])|[≠¬∉]|!=")
_INEQUALITY = r"(?:<|>|≤|≥|≪|≫|\\(?:le|ge|leq|geq|lt|gt|leqslant|geqslant|ll|gg)(?![A-Za-z]))"
_BOUND_BEFORE = re.compile(rf"{_INEQUALITY}$")  # matched on the stripped end of the text before the box
_BOUND_AFTER = re.compile(rf"^\s*{_INEQUALITY}")
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
    tokens = set(_CANDIDATE.findall(_POWER.sub(" ", text)))  # distinct first: a megabyte of "1 + 1" is one token
    return {token.lower() if token.isalpha() and len(token) > 1 else token.lstrip("+") for token in tokens}


_STRIKE_OPEN = re.compile(r"\\(?:sout|st|cancel|bcancel|xcancel)\s*\{")


def _inside_strike(before: str) -> bool:
    """Whether a strike command opened in `before` is still open where `before` ends (`\\sout{\\boxed{4}}`)."""
    for m in _STRIKE_OPEN.finditer(before):
        tail = before[m.end() :]
        if tail.count("{") >= tail.count("}"):
            return True
    return False


def ruled_out(text: str, symbols: bool = True) -> bool:
    """Words or symbols in `text` that rule a value out, offer another or make it a bound ("not 3", "3 or more",
    "more than 3", `x \\neq 3`, struck text): an answer with them is not the value it names. Read over the final
    clause of a whole solution (`final_clause`), or over a short answer. `symbols=False` for math, where `x \\neq 3`
    may itself be the answer."""
    words = plain_words(text)
    return bool(_HEDGE.search(words) or (symbols and _NOT_SYMBOL.search(text)) or _struck_spans(fold_letters(text)))


def final_clause(text: str) -> str:
    """The text after the last sentence end or conclusion word ("so", "therefore"...): where a final answer is."""
    return _SENTENCE_END.split(text.strip())[-1]


def _hedged(before: str, after: str, content: str) -> bool:
    own = _candidates(plain_words(content))
    if ruled_out(before) or ruled_out(after):
        return True
    before, after = plain_words(before), plain_words(after)
    if _BOUND_BEFORE.search(before.rstrip()[-12:]) or _BOUND_AFTER.search(after[:200]):
        return True
    # the working's equation right before the box (searched in its last 300 characters: a regex anchored at the end
    # of a megabyte would be quadratic)
    tail = before[-300:]
    equation = _EQUATION_TAIL.search(tail)
    if equation:
        before = before[: len(before) - len(tail) + equation.start()]
    return bool((_candidates(before) | _candidates(after)) - own)


class BoxReading(NamedTuple):
    content: str | None  # the one box's content (None: no box, an unclosed one, or a problem)
    problem: str | None  # "several boxes" | "hedged box" | None


def _boxes(text: str) -> tuple[int, list[tuple[int, int, int]]]:
    """(how many box commands, [(command start, content start, content end)] of those whose braces close). One pass
    with a stack of open braces: a megabyte of unclosed `\\boxed{` costs linear time."""
    commands = len(BOX_COMMAND.findall(text))
    command_at = {m.end(): m.start() for m in _BOX_OPEN.finditer(text)}  # content start -> command start
    if not command_at:
        return commands, []
    stack: list[int] = []
    spans = []
    for brace in _BRACE.finditer(text):
        i = brace.start()
        if text[i] == "{":
            stack.append(i + 1)
        elif stack:
            start = stack.pop()
            if start in command_at:
                spans.append((command_at[start], start, i))
    return commands, sorted(spans)


_BRACE = re.compile(r"[{}]")


def box_count(text: str) -> int:
    return len(BOX_COMMAND.findall(text))


def several_boxes(text: str) -> bool:
    """More than one DIFFERENT box (`\\boxed{3} \\boxed{4}`, `\\boxed{\\boxed{4}}`, an unclosed one next to a closed
    one); the same answer boxed twice (`\\boxed{840} ... \\boxed{840}`) is one answer."""
    commands, spans = _boxes(text)
    if commands < 2:
        return False
    contents = {" ".join(text[a:b].split()) for _, a, b in spans}
    return len(contents) > 1 or len(spans) < commands


@lru_cache(maxsize=64)  # extraction reads the region, then the task's reader reads it again
def read_box(region: str, sentence_only: bool = False) -> BoxReading:
    """The one box of an answer region and whether its surroundings make it no answer (see the module docstring).

    `sentence_only=True` reads only the box's own sentence before it (from its last "so" / "therefore" / "thus" /
    "hence" on), for a region that is a whole solution (no answer tags: the working before the conclusion is not an
    answer); the text after the box is always read to the end. The same answer boxed twice is read as one box (the
    last one; the earlier one then stands as a repetition of it, not as another candidate).
    """
    commands, spans = _boxes(region)
    if not commands:
        return BoxReading(None, None)
    if several_boxes(region):
        return BoxReading(None, "several boxes")
    if not spans:
        return BoxReading(None, None)
    command, first, last = spans[-1]
    before, content, after = region[:command], region[first:last], region[last + 1 :]
    if sentence_only:
        before = _SENTENCE_END.split(before)[-1]
    struck = _struck_spans(fold_letters(before + region[command:])) or _inside_strike(before)
    if struck or _hedged(before, after, content):
        return BoxReading(None, "hedged box")  # the last test: a struck-out box, `~~\\boxed{B}~~`
    return BoxReading(content.strip(), None)


__all__ = ["BOX_COMMAND", "BoxReading", "box_count", "final_clause", "several_boxes", "fold_letters", "invisible", "is_blank",
           "plain_words", "read_box", "ruled_out"]
