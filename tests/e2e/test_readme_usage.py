"""Every command of the README's Usage block runs as pasted, in order, in a fresh directory; then every ```bash block
of the docs pages (tests/doc_blocks.py), in the site's order, in the same directory.

The commands are scaled down only by options appended to their line (argparse and the config loader let the last
value win), so what runs is the README's line plus a smaller step count / item count. The accelerate line also gets
a free rendezvous port (the preset's fixed port may be taken by another run on the machine).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.doc_blocks import docs_commands

ROOT = Path(__file__).resolve().parents[2]

# What each command (by prefix) gets appended to scale it down.
SCALE_DOWN = {
    "mmrl build-data synthetic": "--n 12 --eval-n 6",
    "mmrl train": "trainer.max_steps=2",
    "mmrl eval": "--limit 4",
}


def usage_commands(readme: Path = ROOT / "README.md") -> list[str]:
    """The command lines of the first ```bash block under '## Usage', comments stripped."""
    text = readme.read_text(encoding="utf-8")
    section = text.split("\n## Usage\n", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1)
    commands = []
    for line in block.splitlines():
        tokens = shlex.split(line, comments=True)
        if tokens:
            commands.append(shlex.join(tokens))
    return commands


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _scaled(command: str) -> str:
    if command.startswith("accelerate launch"):
        command = command.replace("accelerate launch", f"accelerate launch --main_process_port {_free_port()}", 1)
        return f"{command} trainer.max_steps=2"
    if "trainer.resume=auto" in command:
        return f"{command} trainer.max_steps=4"  # continue past the first run's 2 steps
    extra = next((v for prefix, v in SCALE_DOWN.items() if command.startswith(prefix)), "")
    return f"{command} {extra}".strip()


def test_usage_block_lists_the_commands_we_expect():
    commands = usage_commands()
    assert commands[0].startswith("mmrl config show")
    assert any(c.startswith("mmrl build-data synthetic") and "--eval-n" in c for c in commands)
    assert any(c.startswith("accelerate launch") for c in commands)


@pytest.mark.skipif(shutil.which("mmrl") is None or shutil.which("accelerate") is None,
                    reason="needs the mmrl and accelerate console scripts (pip install -e .)")
def test_readme_usage_runs_as_pasted(tmp_path):
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for command in usage_commands():
        line = _scaled(command)
        if line.startswith("mmrl "):  # the worktree's code, whichever mmrl the console script points at
            line = f"{shlex.quote(sys.executable)} -m {line}"
        done = subprocess.run(line, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"README command failed: {line}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        if command.startswith("accelerate launch"):  # two processes, one summary
            assert done.stdout.count("run directory:") == 1, done.stdout

    # The split, the resumed run and the eval of the run's checkpoint landed where the README says.
    assert len((tmp_path / "data/synth/eval.jsonl").read_text().splitlines()) == 6
    run = tmp_path / "runs/grpo_tiny"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert (run / "checkpoints/step-4").is_dir()
    assert list((run / "eval").glob("step-4-*/report.json"))
    assert (tmp_path / "runs/grpo_tiny_ddp/checkpoints/step-2").is_dir()
    assert list((run / "plots").glob("*.png"))
    assert (tmp_path / "runs/tiny-model/config.json").is_file()

    # The docs pages' commands, after the Usage block (they may read its data and runs).
    (tmp_path / "tests").symlink_to(ROOT / "tests")  # fixtures the pages name (tests/fixtures/...)
    for command in docs_commands():
        line = _scaled(command)
        if line.startswith("mmrl "):
            line = f"{shlex.quote(sys.executable)} -m {line}"
        done = subprocess.run(line, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"docs command failed: {line}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
