"""One boxed answer per completion, as for answer tags: several boxes, or words around the box that rule it out or
hedge it, are no answer.

The last `\\boxed{}` used to win, so a policy could box two answers (`\\boxed{3} \\boxed{4}`), box one and name another
(`3 or \\boxed{4}`, `\\boxed{4}, or 5`, `3, \\boxed{4}`) or box one it rules out (`not \\boxed{C}`, `\\boxed{C} is
wrong`) and be paid whenever the box held the gold. Rules, for every reward and task that reads boxes:

- more than one DIFFERENT box (`\\boxed`, `\\fbox`, `\\framebox`) is no answer: `\\boxed{3} or \\boxed{4}`, nested
  `\\boxed{\\boxed{4}}`, boxes with words between them. The same answer boxed twice (`\\boxed{840} ...
  \\boxed{840}`) is one answer, and boxes side by side with only list separators (`\\boxed{-2} and \\boxed{2}`,
  `\\boxed{3} \\boxed{4}`) are ONE list answer (`-2, 2`), which each task reads as a list (two numbers are no count);
- in an answer block, the block around the box is read: a negation (`not`, `isn't`, ...), an alternative (`or`,
  `maybe`, ...) or another candidate the box does not hold (a number, a letter, yes/no) is no answer; an equation's
  left side (`2 + 2 = \\boxed{4}`), the working before "so"/"the answer is" and the sentences after the box's are read
  only for alternatives (`_OPEN_WORDS`); a settled "not 3," before the box is deleted (`_settle`);
- in a whole solution (no answer tags; a math solution), the box's neighbourhood is read (`_window_hedged`): the last
  words of its sentence, the rest of its sentence, the next sentence's first words (`\\boxed{4}. Wait, ...`); the
  working around it is not a hedge (`\\equiv \\boxed{9} \\pmod{11}`);
- a bound is not an answer: "more than \\boxed{3}", "at least", `x < \\boxed{4}`, `\\boxed{4} \\le x`, and neither is a
  value said to differ (`x \\neq \\boxed{4}`) or struck out (`~~\\boxed{B}~~`, `\\sout{\\boxed{4}}`, `<del>`).

`stated` reads answers without a box: what they rule out is deleted ("5, not 4" answers 5; before, the count, number
and math readers could take the ruled-out 4), and a bound ("3 or more", "at least 3") answers nothing.

Words are read after LaTeX text wrappers (`\\text{ or }`), markdown emphasis, invisible characters and look-alike
letters from other scripts (Cyrillic `о` in `оr`) are folded, so none of them hides a word from these rules.

>>> read_box("The answer is \\\\boxed{4}.").content, read_box("3 or \\\\boxed{4}").problem
('4', 'hedged box')
>>> read_box("\\\\boxed{3} or \\\\boxed{4}").problem, read_box("2 + 2 = \\\\boxed{4}").content
('several boxes', '4')
>>> read_box("\\\\boxed{-2} and \\\\boxed{2}").content, stated("5, not 4"), stated("3 or more")
('-2, 2', '5', None)
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import NamedTuple

from mmrl.rewards.strikes import delete_struck as _delete_struck
from mmrl.rewards.strikes import struck_spans as _struck_spans

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
_SENTENCE_END = re.compile(r"[.!?]\$*(?=\s)|\n|\b(?:so|therefore|thus|hence)\b", re.IGNORECASE)


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


# A value the answer rules out, up to the next "but", comma, parenthesis or line: "not 4", "isn't 4", "rather than 4".
# A contraction is spelled out ("isnt", "isn't"): `n'?t` after any letters also matched "amount", "point", "want", so
# "The total amount is 4" lost its 4 and a correct count scored 0.
_NEGATED_SPAN = re.compile(
    rf"(?:\b(?:not|never|nor|except|excluding|unlike|rather\s+than|instead\s+of|{_CONTRACTED})\b|(?<=\w)n't\b)"
    r"[^,;()\n]*?(?=\bbut\b|[,;()\n]|$)", re.IGNORECASE)
_BOUND_ONLY = re.compile(rf"\b(?:{_BOUND}|or\s+(?:more|less|fewer|so|above|below|greater|higher|lower|over|under))\b",
                         re.IGNORECASE)


# A verdict on the value already named: "4 is wrong", "4 isn't right", "4 is not the answer". It follows the value,
# so `_NEGATED_SPAN` (which deletes what comes AFTER a negation) left the rejected 4 as the answer: paid.
_REJECTED = re.compile(rf"(?i)\b(?:wrong|incorrect|false|ruled\s+out)\b|(?:\b(?:not|never|{_CONTRACTED})|(?<=\w)n't)"
                       r"\s+(?:right|correct|true|it|valid|the\s+answer)\b")
_PLUS_BOUND = re.compile(r"\d\+(?![\d\w(\\{])")  # "4+" (4 or more, no operand after it): a bound, for a count


def stated(text: str, symbols: bool = False) -> str | None:
    """An answer without a box, with what it rules out deleted: "5, not 4" -> "5", "not 6 but 5" -> "but 5",
    "~~3~~ 4" -> "4", "not 3" -> "" (nothing left: no answer); None for a bound ("3 or more", "at least 3", "more than
    3"), which is not a value. Text with neither is returned unchanged (LaTeX kept for math-verify). A value rejected
    after it is named ("4 is wrong", "4 isn't right") is no answer: "". `symbols=True` (count, number: tasks whose
    answer is one value) also reads `x \\neq 4` as no answer and an inequality (`\\geq 4`, `≥ 4`, `x < 4`) as a bound;
    math leaves them to math-verify, where `x \\neq 3` or `x < 3` may be the answer itself.

    Before, every number of "5, not 4" was a candidate: the ruled-out 4 was read as the answer."""
    words = plain_words(text)
    if _BOUND_ONLY.search(words) or (symbols and (re.search(_INEQUALITY, text) or _PLUS_BOUND.search(words))):
        return None
    if re.search(r"\b(?:neither|nor)\b", words, re.IGNORECASE):  # "neither 4 nor 5", "4 nor 5": every value out
        return ""
    if _REJECTED.search(words) or (symbols and _NOT_SYMBOL.search(text)):  # "4 is wrong"; `x \neq 4` for a count
        return ""
    if not (_NEGATED_SPAN.search(words) or _struck_spans(fold_letters(text))):
        return text
    return re.sub(r"\(\s*\)", " ", _NEGATED_SPAN.sub(" ", words)).strip(" ,;")


def final_clause(text: str) -> str:
    """The text after the last sentence end or conclusion word ("so", "therefore"...): where a final answer is."""
    return _SENTENCE_END.split(text.strip())[-1]


# Read in the working before a conclusion ("so", "actually", "the answer is") and in the sentences after the box's:
# words that leave the answer open ("Maybe 3, so \\boxed{4}", "\\boxed{4}. Or 5.", "\\boxed{4}. Not sure."). A negation
# there is explanation, not a hedge: "No other solution works, so the answer is \\boxed{4}", "\\boxed{No}. The dog is
# not present."
_OPEN_WORDS = re.compile(rf"(?i)\b(?:{_ALTERNATIVE}|wait|hmm|oops|correction|not\s+(?:sure|certain|confident))\b")
_CONCLUSION = re.compile(r"\b(?:so|therefore|thus|hence|actually|answer\s+is|answer\s*:)(?![\w'])", re.IGNORECASE)
# A negation settled before the answer: "not 3," "isn't 3;" (it rules out another value, up to a separator) or
# "Without the box," (a phrase). Deleted before the box's words are read: "Since x is not 3, x = \\boxed{4}" and
# "The answer isn't 3; it's \\boxed{4}" answer 4. A negation running up to the box ("not \\boxed{4}", "not 3 or
# \\boxed{4}", "It is not true that it is \\boxed{4}") is not settled and still rules the box out.
_SETTLED = re.compile(rf"(?:\b(?:without|except|excluding|unlike)\b[^,;()\n]*"
                      rf"|(?:\b(?:not|never|cannot|{_CONTRACTED})\b|(?<=\w)n't\b)[^,;()\n]*?"
                      r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?![\w.])[^,;()\n]*?)\s*[,;)\n]", re.IGNORECASE)


def _settle(before: str, own: set[str]) -> str:
    return _SETTLED.sub(lambda m: m[0] if _candidates(m[0]) & own or _OPEN_WORDS.search(m[0]) else " ", before[-2000:])


def _restated(following: str, own: set[str]) -> bool:
    """A later sentence concluding another value: `\\boxed{4}. The answer is 5.`, `\\boxed{4}. So it is 5.`"""
    return any(_candidates(plain_words(re.split(r"[.!?\n]", following[m.end() : m.end() + 200])[0])) - own
               for m in _CONCLUSION.finditer(following[:2000]))


def _hedged(before: str, after: str, content: str) -> bool:
    own = _candidates(plain_words(content))
    conclusion = list(_CONCLUSION.finditer(before[-2000:]))
    if conclusion:  # the working before "so" / "the answer is" is read for open alternatives only
        working, before = before[-2000:][: conclusion[-1].start()], before[-2000:][conclusion[-1].end() :]
        if _OPEN_WORDS.search(plain_words(working)):
            return True
    end = _OWN_SENTENCE_END.search(after)
    if end:  # the sentences after the box's own: read for open alternatives only
        after, following = after[: end.start()], after[end.end() :]
        if _OPEN_WORDS.search(plain_words(following)) or _restated(following, own):
            return True
    before = _settle(before, own)
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


# What may stand between the boxes of ONE list answer: `\\boxed{-2} and \\boxed{2}`, `\\boxed{1}, \\boxed{2}`,
# `\\boxed{a} \\quad \\text{and} \\quad \\boxed{b}` (math-verify reads such boxes as one set). "or" is not among them.
_LIST_GAP = re.compile(r"(?:\s|\$|\\[,;! ]|\\q?quad|,|;|&|\band\b|\\text\s*\{\s*(?:and|,)?\s*\})*", re.IGNORECASE)


def _list_of_boxes(text: str, spans: list[tuple[int, int, int]]) -> bool:
    """The boxes are side by side (none inside another) with only list separators between them."""
    return all(nxt[0] > cur[2] and _LIST_GAP.fullmatch(text[cur[2] + 1 : nxt[0]])
               for cur, nxt in zip(spans, spans[1:]))


def several_boxes(text: str) -> bool:
    """More than one DIFFERENT box that is not one list answer: `\\boxed{3} or \\boxed{4}`, `\\boxed{\\boxed{4}}`,
    boxes with words between them, an unclosed one next to a closed one. The same answer boxed twice
    (`\\boxed{840} ... \\boxed{840}`) is one answer, and `\\boxed{-2} and \\boxed{2}` is the list `-2, 2`."""
    commands, spans = _boxes(text)
    if commands < 2:
        return False
    if len(spans) < commands:
        return True
    contents = {" ".join(text[a:b].split()) for _, a, b in spans}
    return len(contents) > 1 and not _list_of_boxes(text, spans)


_TOKEN = re.compile(r"\\[A-Za-z]+|[A-Za-z']+|\d+(?:\.\d+)?|[^\s\w]")
_SEPARATOR = {",", ";", "/", "(", ")", "$", "*", "&", "[", "]", "{", "}", ":"}
_RETRACTION = {"wait", "actually", "hmm", "correction", "no", "oops", "alternatively"}
_OWN_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")


def _adjacent_candidate(tokens: list[str], own: set[str]) -> bool:
    kept = [t for t in tokens if t not in _SEPARATOR]
    return bool(kept) and bool(_candidates(kept[0]) - own)


def _window_hedged(before: str, after: str, content: str) -> bool:
    """The box's neighbourhood in a whole solution: the last words of its sentence before it, the rest of its
    sentence after it and the first words of the next sentence. The working around (other numbers, later remarks) is
    not read: `\\equiv \\boxed{9} \\pmod{11}`, `x = \\boxed{1 \\pm \\sqrt{19}}`, `\\boxed{24}. The final answer is 24`."""
    own = _candidates(plain_words(content))
    sentence = _SENTENCE_END.split(_settle(before, own))[-1]
    whole = re.split(r"[.!?]\$*(?=\s)|\n", before[-2000:])[-1]  # "Maybe 3, so \\boxed{4}": the box's whole sentence
    if _OPEN_WORDS.search(plain_words(whole)):
        return True
    words_before = _TOKEN.findall(plain_words(sentence))[-12:]
    end = _OWN_SENTENCE_END.search(after[:2000])
    rest, following = (after[: end.start()], after[end.end() : end.end() + 200]) if end else (after[:2000], "")
    words_after = _TOKEN.findall(plain_words(rest))[:6]
    words_next = _TOKEN.findall(plain_words(following))[:4]
    if any(ruled_out(" ".join(words)) for words in (words_before, words_after)):
        return True
    # a later sentence that leaves the answer open or concludes another value ("\\boxed{4}. The answer is 5.")
    if _OPEN_WORDS.search(plain_words(following[:60])) or (end and _restated(after[end.end() :], own)):
        return True
    if _NOT_SYMBOL.search(sentence[-80:]) or _NOT_SYMBOL.search(rest[:80]):
        return True
    if _BOUND_BEFORE.search(plain_words(sentence).rstrip()[-12:]) or _BOUND_AFTER.search(plain_words(rest)[:200]):
        return True
    if any(word.lower() in _RETRACTION for word in words_next):
        return True
    return _adjacent_candidate(words_before[::-1], own) or _adjacent_candidate(words_after, own)


@lru_cache(maxsize=64)  # extraction reads the region, then the task's reader reads it again
def read_box(region: str, sentence_only: bool = False) -> BoxReading:
    """The one box of an answer region and whether its surroundings make it no answer (see the module docstring).

    `sentence_only=False` (an answer block) reads the whole region around the box; `sentence_only=True` (a whole
    solution: no answer tags, or a math solution) reads the box's neighbourhood (`_window_hedged`). The same answer
    boxed twice is read as one box (the last); boxes side by side with only list separators between them are one
    list answer (`\\boxed{-2} and \\boxed{2}` reads `-2, 2`).
    """
    commands, spans = _boxes(region)
    if not commands:
        return BoxReading(None, None)
    if several_boxes(region):
        return BoxReading(None, "several boxes")
    if not spans:
        return BoxReading(None, None)
    contents = [region[a:b].strip() for _, a, b in spans]
    if len({" ".join(c.split()) for c in contents}) > 1:  # a list of boxes: read as one answer
        command, content, last = spans[0][0], ", ".join(contents), spans[-1][2]
    else:
        command, first, last = spans[-1]
        content = region[first:last]
    before, after = region[:command], region[last + 1 :]
    struck = _struck_spans(fold_letters(before[-2000:] + region[command : last + 2000])) or _inside_strike(before)
    hedged = _window_hedged(before, after, content) if sentence_only else _hedged(before, after, content)
    if struck or hedged:
        return BoxReading(None, "hedged box")  # the last test: a struck-out box, `~~\\boxed{B}~~`
    return BoxReading(content.strip(), None)


__all__ = ["BOX_COMMAND", "BoxReading", "box_count", "final_clause", "fold_letters", "invisible", "is_blank",
           "plain_words", "read_box", "ruled_out", "several_boxes", "stated"]
