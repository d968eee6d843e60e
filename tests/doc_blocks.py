"""The fenced code blocks of the README and the documentation pages (docs/*.md), parsed once for the tests that run
them: every ```bash block is a command a test runs (tests/e2e/test_readme_usage.py), every ```python block a test
names (`PYTHON_RUN_BY`); what cannot run offline (a server, an endpoint, a GPU, an hours-long pipeline) is a ```text
block. tests/unit/test_doc_blocks.py holds the pages to that."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.DOTALL | re.MULTILINE)
_HEADING = re.compile(r"^(#{1,6}) (.+)$", re.MULTILINE)


@dataclass(frozen=True)
class Block:
    page: str  # README.md or docs/<page>.md
    heading: str  # the heading the block stands under
    lang: str
    code: str


def doc_pages() -> list[str]:
    """README.md, then the site's pages in the order of mkdocs.yml's nav."""
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]
    return ["README.md", *(f"docs/{page}" for item in nav for page in item.values())]


@functools.cache
def blocks() -> tuple[Block, ...]:
    found = []
    for page in doc_pages():
        text = (ROOT / page).read_text(encoding="utf-8")
        headings = [(m.start(), m.group(2).strip()) for m in _HEADING.finditer(_without_fences(text))]
        for match in _FENCE.finditer(text):
            heading = next((h for start, h in reversed(headings) if start < match.start()), "")
            found.append(Block(page, heading, match.group(1), match.group(2)))
    return tuple(found)


def _without_fences(text: str) -> str:
    """The text with every fenced block blanked (same length), so a `# comment` in a block is no heading."""
    return _FENCE.sub(lambda m: " " * len(m.group(0)), text)


def block(page: str, heading: str, lang: str) -> str:
    """The one `lang` block of `page` under `heading`."""
    found = [b.code for b in blocks() if (b.page, b.heading, b.lang) == (page, heading, lang)]
    assert len(found) == 1, f"{page}: {len(found)} ```{lang} blocks under '{heading}' (expected 1)"
    return found[0]


# The set-up commands of the README: .ci/run runs the test command; the quickstart is the test command's subject
# (tests/unit/test_help_examples.py checks what it leaves behind, tests/e2e/test_recipes_offline.py its config).
SETUP_HEADING = "Set-up: two commands"
# ```python blocks and the test that runs each.
PYTHON_RUN_BY = {
    ("docs/python-api.md", "Python API"): "tests/e2e/test_readme_python.py",
    ("docs/rewards.md", "Your own reward"): "tests/e2e/test_readme_python.py",
    ("docs/serving.md", "Serving a model: `mmrl serve`"): "tests/integration/test_serve.py",
}


def docs_commands() -> list[str]:
    """The command lines of every ```bash block of the docs pages (README's are run on their own), in nav order."""
    import shlex

    commands = []
    for found in blocks():
        if found.lang == "bash" and found.page != "README.md":
            for line in found.code.splitlines():
                tokens = shlex.split(line, comments=True)
                if tokens:
                    commands.append(line.split(" #")[0].strip() if "|" in line else shlex.join(tokens))
    return commands
