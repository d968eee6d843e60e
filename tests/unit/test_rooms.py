"""The floors between mmrl's rooms, and the one decoding path.

- `mmrl.sft` imports nothing from `mmrl.rl`; `mmrl.pipeline` nothing from `mmrl.commands`; `mmrl.generation` no
  training code (rl, sft, pipeline, commands), neither in its source nor at import time; `mmrl.models` and
  `mmrl.data` nothing from a higher room.
- Generation happens in `mmrl/generation/` only: no `model.generate(...)`, no token sampling (`multinomial`), no
  second stop-id or strip list anywhere else in the package, the builders or the demos.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HIGHER = ("mmrl.rl", "mmrl.sft", "mmrl.pipeline", "mmrl.commands", "mmrl.eval", "mmrl.api", "mmrl.cli")


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included); relative imports (`from ..rl
    import x`) are resolved against the file's package under `root`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = list(path.relative_to(root).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            if module:
                names.add(module)
                names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def offending(package: str, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in sorted((ROOT / package.replace(".", "/")).rglob("*.py")):
        for name in imported_modules(path):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                found.append(f"{path.relative_to(ROOT)}: {name}")
    return found


@pytest.mark.parametrize(("package", "forbidden"), [
    ("mmrl.sft", ("mmrl.rl",)),
    ("mmrl.pipeline", ("mmrl.commands",)),
    ("mmrl.generation", ("mmrl.rl", "mmrl.sft", "mmrl.pipeline", "mmrl.commands")),
    ("mmrl.models", HIGHER + ("mmrl.generation",)),
    ("mmrl.data", HIGHER + ("mmrl.generation",)),
    ("data_pipelines", ("mmrl.rl", "mmrl.sft", "mmrl.pipeline", "mmrl.commands")),
])
def test_floors_in_the_source(package, forbidden):
    assert offending(package, forbidden) == []


def test_the_import_check_sees_function_level_imports(tmp_path):
    sample = tmp_path / "x.py"
    sample.write_text("def f():\n    from mmrl.rl.trainer import GRPOTrainer\n    import mmrl.commands.serve\n")
    assert {"mmrl.rl.trainer", "mmrl.commands.serve"} <= imported_modules(sample, tmp_path)


def test_the_import_check_resolves_relative_imports(tmp_path):
    (tmp_path / "mmrl" / "sft").mkdir(parents=True)
    sample = tmp_path / "mmrl" / "sft" / "x.py"
    sample.write_text("def f():\n    from ..rl import advantages\n    from ..commands.serve import run\n"
                      "    from . import data\n")
    assert {"mmrl.rl.advantages", "mmrl.commands.serve", "mmrl.sft.data"} <= imported_modules(sample, tmp_path)


def test_generation_and_sft_load_no_training_code():
    code = ("import sys, mmrl.generation, mmrl.generation.hf, mmrl.generation.server, mmrl.generation.http, "
            "mmrl.sft.trainer, mmrl.pipeline.builders\n"
            "print(sorted(m for m in sys.modules if m.startswith(('mmrl.rl', 'mmrl.commands'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout


# Signs of a decoding path: sampling tokens, calling HF generate, a list of ids or strings that end/strip completions.
DECODING_SIGNS = {
    "model.generate call": re.compile(r"\.generate\(\s*\*\*|\bmodel\.generate\("),
    "token sampling": re.compile(r"\bmultinomial\(|\bsample_next\(|\bTextIteratorStreamer\b"),
    "stop-id list": re.compile(r"\b(def\s+\w*(eos|stop)_(token_)?ids\b|_stop_ids\s*=|STOP_IDS\s*=)"),
    "strip list": re.compile(r"\bSTRIP_(TOKENS|STRINGS)\s*="),
}
SCANNED = ("mmrl", "data_pipelines", "demos")


def decoding_paths(root: Path) -> list[str]:
    found = []
    for top in SCANNED:
        for path in sorted((root / top).rglob("*.py")):
            rel = path.relative_to(root)
            if rel.parts[:2] == ("mmrl", "generation"):
                continue
            text = path.read_text(encoding="utf-8")
            found += [f"{rel}: {kind}" for kind, pattern in DECODING_SIGNS.items() if pattern.search(text)]
    return found


def test_one_decoding_path():
    assert decoding_paths(ROOT) == []


def test_a_second_decoding_path_is_caught(tmp_path):
    (tmp_path / "mmrl" / "eval").mkdir(parents=True)
    (tmp_path / "mmrl" / "eval" / "gen.py").write_text(
        "STRIP_STRINGS = ('<|im_end|>',)\n"
        "def _stop_ids(model, tok):\n    return {tok.eos_token_id}\n"
        "def run(model, inputs):\n    return model.generate(**inputs, max_new_tokens=4)\n")
    (tmp_path / "data_pipelines").mkdir()
    (tmp_path / "data_pipelines" / "sampler.py").write_text("import torch\nt = torch.multinomial(p, 1)\n")
    found = decoding_paths(tmp_path)
    assert found == ["mmrl/eval/gen.py: model.generate call", "mmrl/eval/gen.py: stop-id list",
                     "mmrl/eval/gen.py: strip list", "data_pipelines/sampler.py: token sampling"]


def test_the_data_rooms_list_of_reward_arguments_is_the_reward_registrys():
    # data.dataset writes the list out (the rewards stand higher); a new reward argument must be added there too
    from mmrl.data.dataset import REWARD_ARGUMENTS
    from mmrl.rewards.registry import get_reward, list_rewards, reward_arguments

    registered = {arg for name in list_rewards() for arg in reward_arguments(get_reward(name))[0]}
    assert REWARD_ARGUMENTS == registered, f"mmrl.data.dataset.REWARD_ARGUMENTS differs by {registered ^ REWARD_ARGUMENTS}"
