"""Every repository path the README names (configs, tests, presets) exists: a command a user copies must run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_configs_and_tests_path_in_the_readme_exists():
    text = (ROOT / "README.md").read_text()
    named = set(re.findall(r"(?<![\w/.])((?:configs|tests)/[\w./-]*\.(?:yaml|py))", text))
    assert named  # the pattern does find the README's paths
    missing = sorted(p for p in named if not (ROOT / p).is_file())
    assert not missing, f"README names files that do not exist: {missing}"
