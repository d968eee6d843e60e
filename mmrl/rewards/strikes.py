"""Struck-out text in an answer (`~~B~~`, `\\sout{B}`, `<del>yes</del>`): the answer readers treat it as deleted
(see boxes.py)."""

from __future__ import annotations

import re

# Struck-out text is deleted text: `~~B~~`, `\sout{B}`, `\cancel{4}`, `<del>yes</del>` (a policy striking the answer
# it is paid for was read as giving it).
_STRIKE_MARK = re.compile(r"~~|<(/?)(s|del|strike)>|\\(?:sout|st|cancel|bcancel|xcancel)\s*\{[^{}]*\}", re.IGNORECASE)


def struck_spans(text: str) -> list[tuple[int, int]]:
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


def delete_struck(text: str) -> str:
    spans = struck_spans(text)
    if not spans:
        return text
    out, at = [], 0
    for start, end in sorted(spans):
        if start >= at:
            out.append(text[at:start] + " ")
            at = end
    return "".join(out) + text[at:]


__all__ = ["delete_struck", "struck_spans"]
