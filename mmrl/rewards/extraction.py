"""Pull the final answer out of a completion, the same way for rewards and for evaluation.

Rules (the peers' bugs they avoid are named in the rewards issue):
- the answer is the content of THE `<answer>…</answer>` outside the reasoning (tags configurable);
- ONE answer block per completion: a completion with more than one opening or closing answer tag anywhere (reasoning
  included) has no answer (`None`), so every reward that reads the answer scores it as a missing answer (0; the
  invalid-prediction score for box and GUI rewards) and the composite counts it as `<name>/multiple_answers`. This
  is the `format` reward's own rule (exactly one `<answer>` and one `</answer>`): `<answer>B</answer> … <answer>A
  </answer>` must not let a policy offer two answers and be paid for whichever comes last;
- without answer tags, `\\boxed{…}` is used only when `allow_boxed=True`;
- ONE box per completion too (`boxes.read_box`): several different boxes outside the reasoning (the same box twice
  is one answer, boxes side by side one list answer), a box outside the answer block next to it, or a box hedged or ruled out by the words around it (`3 or \\boxed{4}`, `not \\boxed{C}`) is no answer,
  whichever reward or task reads it (a box inside the reasoning is a draft and is not read);
- the reasoning is everything up to the last `</think>` (a missing `<think>` still counts as reasoning), so an
  answer that appears only inside `<think>` does not count;
- an empty answer, or one of whitespace and invisible characters only (`\\u200b`), is no answer: `None`, never `""`
  (an empty string is a substring of everything).

>>> extract_answer("<think>2+2</think><answer> 4 </answer>")
'4'
>>> extract_answer("<think>it is <answer>4</answer></think>") is None
True
>>> extract_answer("<think>...</think> so \\\\boxed{\\\\frac{1}{2}}.", allow_boxed=True)
'\\\\frac{1}{2}'
>>> extract_answer("<answer>  </answer>") is None
True
>>> extract_answer("<think>x</think><answer>B</answer> or rather <answer>A</answer>") is None
True
>>> extract_answer("<think>x</think> 3 or \\\\boxed{4}", allow_boxed=True) is None
True
"""

from __future__ import annotations

import re

from mmrl.rewards.boxes import box_count, is_blank, read_box, several_boxes

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def strip_reasoning(completion: str, think_close: str = THINK_CLOSE) -> str:
    """The part of a completion after the reasoning: text after the last `</think>` (all of it if there is none)."""
    cut = completion.rfind(think_close)
    if cut >= 0:
        return completion[cut + len(think_close) :]
    # An unclosed <think> means everything after it is reasoning: no answer can be outside it.
    opened = completion.find(THINK_OPEN)
    return completion[:opened] if opened >= 0 else completion


_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE = re.compile(r"[{}]")


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{…}` (or `\\fbox{…}`) with balanced braces, or None.

    One pass over the text with a stack of open braces, so a megabyte of unclosed `\\boxed{` costs linear time (the
    "last" box is the one that opens last among those that close; a box nested in another wins over its parent).
    """
    box_starts = {m.end() for m in _BOX_OPEN.finditer(text)}
    if not box_starts:
        return None
    stack: list[int] = []  # content start of each open brace
    best_start, best = -1, None
    for brace in _BRACE.finditer(text):
        i = brace.start()
        if text[i] == "{":
            stack.append(i + 1)
        elif stack:
            start = stack.pop()
            if start in box_starts and start > best_start:
                best_start, best = start, text[start:i]
    return best


def has_multiple_answers(completion: str, tags: tuple[str, str] | list[str] | None = ("<answer>", "</answer>")) -> bool:
    """More than one opening or closing answer tag anywhere in the completion (the `format` reward's count rule), or
    more than one different box outside the reasoning."""
    if not isinstance(completion, str):
        return False
    if several_boxes(strip_reasoning(completion)):
        return True
    if tags is None:
        return False
    open_tag, close_tag = tags
    return completion.count(open_tag) > 1 or completion.count(close_tag) > 1


# LaTeX that typesets nothing: spacing (`\,`, `\quad`, `~`, `\hspace{1em}`, `\phantom{4}`), math delimiters around
# nothing (`$$`, `\(\)`) and empty groups or commands (`{}`, `\boxed{}`, `\text{ }`). `<answer>$$</answer>` and
# `<answer>\boxed{}</answer>` were paid as a non-empty answer block, like the invisible characters before them.
_LATEX_NOTHING = re.compile(r"\\(?:[,;:! ]|q?quad(?![A-Za-z])|[hv]?phantom\s*\{[^{}]*\}|[hv]space\*?\s*\{[^{}]*\})"
                            r"|\\[()\[\]]|[$~{}]")
_EMPTY_COMMAND = re.compile(r"\\[A-Za-z]+\s*(?:\[[^\]]{0,40}\]\s*)?\{\s*\}")


def prints_nothing(answer: str) -> bool:
    """Whether an answer typesets nothing: invisible characters, LaTeX spacing, empty groups and commands."""
    if is_blank(answer) or len(answer) > 10_000:  # a longer answer is not LaTeX spacing alone: not worth reading
        return is_blank(answer)
    for _ in range(3):  # `\boxed{\text{}}`: an empty command inside another empties it in turn
        answer = _EMPTY_COMMAND.sub("", _LATEX_NOTHING.sub(lambda m: "" if m[0] not in "{}" else m[0], answer))
    return is_blank(_LATEX_NOTHING.sub("", answer))


def extract_answer(
    completion: str,
    tags: tuple[str, str] | list[str] | None = ("<answer>", "</answer>"),
    allow_boxed: bool = False,
) -> str | None:
    """The final answer of `completion`, or None when absent, empty, or only inside the reasoning.

    `tags=None` takes the whole text after the reasoning as the answer (for models prompted without answer tags).
    Several answer blocks are no answer (see the module docstring), and `\\boxed{}` is then not consulted either.
    """
    if not isinstance(completion, str) or has_multiple_answers(completion, tags):
        return None
    visible = strip_reasoning(completion)
    if several_boxes(visible):  # two different boxed answers: one answer per completion
        return None
    answer: str | None = None
    if tags is not None:
        # The last closing tag and the last opening tag before it: two reverse scans, linear time even for a
        # megabyte of unclosed `<answer>` (a non-greedy regex over all opening tags is quadratic there).
        open_tag, close_tag = tags
        end = visible.rfind(close_tag)
        start = visible.rfind(open_tag, 0, end) if end >= 0 else -1
        if start >= 0:
            answer = visible[start + len(open_tag) : end]
    else:
        answer = visible
    if answer is not None:
        if box_count(visible) > box_count(answer):  # a box outside the answer block is a second answer
            return None
        # Words around a box inside the answer ("3 or \\boxed{4}"); a whole solution (tags=None) by its last sentence.
        if read_box(answer, sentence_only=tags is None).problem:
            return None
    elif allow_boxed:
        reading = read_box(visible, sentence_only=True)
        answer = reading.content
    if answer is None or prints_nothing(answer):  # `\phantom{4}`, `$$`: an answer no reader sees
        return None
    return answer.strip()


__all__ = ["extract_answer", "has_multiple_answers", "last_boxed", "prints_nothing", "strip_reasoning"]
