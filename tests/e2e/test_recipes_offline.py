"""Every recipe's header shows an offline line on the tiny preset, and that line runs as written.

The data comes from the one command the headers name (`mmrl build-data recipes`, with fewer items here); each line
runs in a fresh directory with its output directory moved under it, and nothing else is changed.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from mmrl.cli import main
from mmrl.config import load_config

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted(
    p.relative_to(ROOT).as_posix()
    for pattern in ("configs/*.yaml", "configs/vision_r1/*.yaml", "configs/curr_reft/*.yaml", "configs/tests/*.yaml")
    for p in ROOT.glob(pattern)
    if p.name != "quickstart.yaml"
)


def offline_lines(path: Path) -> list[str]:
    """Header commands (`#   mmrl ...`, `\\`-continued) whose trailing comment says `offline`."""
    commands, current = [], None
    for raw in path.read_text(encoding="utf-8").splitlines():
        if not raw.startswith("#"):
            break
        text = raw[1:].strip()
        if current is None and not re.match(r"(mmrl|accelerate) ", text):
            continue
        current = text if current is None else f"{current} {text}"
        if current.endswith("\\"):
            current = current[:-1].rstrip()
            continue
        command, _, comment = current.partition("  #")
        if "offline" in comment:
            commands.append(command.strip())
        current = None
    return commands


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipes")
    shutil.copytree(ROOT / "configs", root / "configs")
    assert main(["build-data", "recipes", "--out", str(root / "data"), "--n", "16"]) == 0
    return root


def test_every_recipe_has_one_offline_line():
    assert len(RECIPES) >= 8
    for recipe in RECIPES:
        lines = offline_lines(ROOT / recipe)
        assert len(lines) == 1, f"{recipe}: expected one '# offline' command in the header, found {lines}"
        argv = shlex.split(lines[0])
        assert argv[2] == recipe
        cfg = load_config(ROOT / recipe, [a for a in argv[3:] if "=" in a])
        assert cfg.model.name_or_path == "tiny", recipe  # the embedded model: nothing from a hub


@pytest.mark.parametrize("recipe", RECIPES)
def test_offline_line_runs(recipe, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    (line,) = offline_lines(ROOT / recipe)
    argv = shlex.split(line)
    assert argv[0] == "mmrl"
    out = f"runs/offline-{Path(recipe).stem}"
    key = "output_dir" if argv[1] == "pipeline" else "trainer.output_dir"
    assert main([*argv[1:], f"{key}={out}"]) == 0
    run = workdir / out
    if argv[1] == "pipeline":
        summary = json.loads((run / "summary.json").read_text())
        assert summary
    else:
        rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
        assert rows and rows[-1]["step"] >= 2
        assert list((run / "checkpoints").glob("step-*"))
