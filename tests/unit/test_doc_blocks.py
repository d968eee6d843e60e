"""The README and the docs pages: every code block that looks runnable is run by a test, and the site builds."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from tests.doc_blocks import PYTHON_RUN_BY, ROOT, SETUP_HEADING, blocks, docs_commands


def test_every_python_block_is_run_by_a_named_test():
    found = {(b.page, b.heading) for b in blocks() if b.lang == "python"}
    assert found == set(PYTHON_RUN_BY), "a ```python block no test runs (or a test names a block that is gone)"
    for test in PYTHON_RUN_BY.values():
        assert (ROOT / test).is_file(), test


def test_shell_blocks_are_bash_run_by_the_usage_test_or_text():
    """A ```sh / ```shell / ```console block would escape the runner: commands that cannot run offline are ```text."""
    langs = {b.lang for b in blocks()}
    assert not langs & {"sh", "shell", "console", "zsh", ""}, langs
    readme_bash = [b.heading for b in blocks() if b.page == "README.md" and b.lang == "bash"]
    assert readme_bash == [SETUP_HEADING, SETUP_HEADING, "Usage"]  # the set-up commands (.ci/run) and Usage


def test_the_setup_commands_are_the_ones_ci_runs():
    setup = [b.code.strip() for b in blocks() if b.page == "README.md" and b.heading == SETUP_HEADING]
    assert setup == [
        'pip install -e . "torch==2.13.0" && mmrl pipeline configs/quickstart.yaml',
        'pip install -e ".[dev]" "torch==2.13.0" && python -m pytest -q -n auto --dist loadfile',
    ]
    ci = (ROOT / ".ci" / "run").read_text()
    assert all(part in ci for part in setup[1].split(" && "))


def test_the_docs_pages_have_commands_to_run():
    commands = docs_commands()
    assert any(c.startswith("mmrl reward score") for c in commands)
    assert any("--plan" in c for c in commands)


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="needs mkdocs (the dev extra)")
def test_the_site_builds_strictly(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "rewards" / "index.html").is_file()


def test_a_block_without_a_runner_is_caught(tmp_path, monkeypatch):
    import tests.doc_blocks as doc_blocks

    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("# x\n\n## Usage\n\n```sh\nmmrl train\n```\n")
    (tmp_path / "docs" / "a.md").write_text("# A\n\n## Code\n\n```python\nprint(1)\n```\n")
    (tmp_path / "mkdocs.yml").write_text("nav:\n  - A: a.md\n")
    monkeypatch.setattr(doc_blocks, "ROOT", tmp_path)
    doc_blocks.blocks.cache_clear()
    try:
        found = doc_blocks.blocks()
    finally:
        doc_blocks.blocks.cache_clear()
    assert [(b.page, b.heading, b.lang) for b in found] == [
        ("README.md", "Usage", "sh"),
        ("docs/a.md", "Code", "python"),
    ]
