"""Every repository path the README and the docs pages name (configs, tests) exists: a command a user copies must
run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_configs_and_tests_path_in_the_readme_and_docs_exists():
    text = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    named = set(re.findall(r"(?<![\w/.])((?:configs|tests)/[\w./-]*\.(?:yaml|py))", text))
    assert named  # the pattern does find the README's paths
    missing = sorted(p for p in named if not (ROOT / p).is_file())
    assert not missing, f"README or docs name files that do not exist: {missing}"
