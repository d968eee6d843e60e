"""The floors between mmrl's rooms, and the one decoding path.

- Every room (a sub-package of mmrl, a top-level module, data_pipelines, demos, benchmarks) stands on a floor of
  `FLOORS`; a room imports only rooms on lower floors (0 imports back up, function-level imports included), and no
  files import each other in a loop (0 circles). `mmrl.generation` and `mmrl.sft` load no training code at import
  time; the GRPO trainer does not reach the dataset builders.
- Generation happens in `mmrl/generation/` only: no `model.generate(...)`, no token sampling (`multinomial`), no
  second stop-id or strip list anywhere else in the package, the builders or the demos.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HIGHER = ("mmrl.rl", "mmrl.sft", "mmrl.workflow", "mmrl.commands", "mmrl.eval", "mmrl.api", "mmrl.cli")


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


# Bottom to top. A room imports only rooms on floors below its own (rooms on one floor do not import each other).
FLOORS: list[tuple[str, ...]] = [
    ("mmrl.errors",),
    ("mmrl.registry", "mmrl.faults"),
    ("mmrl.config",),  # the typed config tree: every room may read it; its registry names are checked by preflight
    ("mmrl.models",),
    ("mmrl.optim", "mmrl.checkpoints"),  # the optimizer step; atomic checkpoints
    ("mmrl.parallel",),  # the DDP / FSDP2 / ZeRO-2 wrappers and the process group
    ("mmrl.runs",),  # a run's directory, segments, logger, threads; TrainingRun ties them together
    ("mmrl.data",),
    ("mmrl.rewards",),
    ("mmrl.envs",),  # environments for multi-turn episodes: observations from the data room, scores from rewards
    ("mmrl.generation",),
    ("mmrl.eval",),
    ("mmrl.rl", "mmrl.sft", "data_pipelines"),
    ("mmrl.preflight",),  # the registry-name checks: above every registry they ask
    ("mmrl.workflow", "mmrl.api", "demos", "benchmarks"),
    ("mmrl.console",),
    ("mmrl.commands",),
    ("mmrl.cli",),
    ("mmrl.__main__", "mmrl"),
]
TOPS = ("mmrl", "data_pipelines", "demos", "benchmarks")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the modules of the tree it imports (at any depth; `from pkg import name` counts `pkg.name` when that
    is a module, else `pkg`)."""
    files = {module_name(p, root): p for top in TOPS for p in sorted((root / top).rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets = set()
        for name in imported_modules(path, root):
            while name and name not in files:
                name = name.rpartition(".")[0]
            if name and not (module == name or module.startswith(name + ".")):  # itself, or its own package
                targets.add(name)
        graph[module] = targets
    return graph


def room_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "mmrl" and len(parts) > 1 else parts[0]


def floor_of(room: str) -> int:
    for level, rooms in enumerate(FLOORS):
        if room in rooms:
            return level
    raise AssertionError(f"room {room} stands on no floor: add it to FLOORS in {Path(__file__).name}")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports of a room on the same or a higher floor (rooms importing themselves aside)."""
    found = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            here, there = room_of(module), room_of(target)
            if here != there and floor_of(there) >= floor_of(here):
                found.append(f"{module} -> {target}")
    return found


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Files that import each other in a loop: the strongly connected components of more than one file (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_room_imports_only_the_floors_below():
    assert upward_imports(import_graph()) == []


def test_no_files_import_each_other_in_a_loop():
    assert circles(import_graph()) == []


def test_the_grpo_trainer_reaches_neither_the_builders_nor_the_commands():
    graph = import_graph()
    reached, todo = set(), ["mmrl.rl.trainer"]
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo.extend(graph.get(module, ()))
    assert sorted(m for m in reached if room_of(m) in ("data_pipelines", "mmrl.workflow", "mmrl.commands",
                                                        "mmrl.preflight")) == []


def test_an_import_back_up_and_a_circle_are_caught(tmp_path):
    (tmp_path / "mmrl" / "data").mkdir(parents=True)
    (tmp_path / "mmrl" / "rewards").mkdir()
    (tmp_path / "mmrl" / "data" / "checks.py").write_text("def f():\n    from mmrl.rewards.registry import get\n")
    (tmp_path / "mmrl" / "rewards" / "registry.py").write_text("from mmrl.data import checks\nget = 1\n")
    graph = import_graph(tmp_path)
    assert upward_imports(graph) == ["mmrl.data.checks -> mmrl.rewards.registry"]
    assert circles(graph) == [["mmrl.data.checks", "mmrl.rewards.registry"]]


def test_the_import_check_sees_function_level_imports(tmp_path):
    sample = tmp_path / "x.py"
    sample.write_text("def f():\n    from mmrl.rl.trainer import GRPOLoop\n    import mmrl.commands.serve\n")
    assert {"mmrl.rl.trainer", "mmrl.commands.serve"} <= imported_modules(sample, tmp_path)


def test_the_import_check_resolves_relative_imports(tmp_path):
    (tmp_path / "mmrl" / "sft").mkdir(parents=True)
    sample = tmp_path / "mmrl" / "sft" / "x.py"
    sample.write_text("def f():\n    from ..rl import advantages\n    from ..commands.serve import run\n"
                      "    from . import data\n")
    assert {"mmrl.rl.advantages", "mmrl.commands.serve", "mmrl.sft.data"} <= imported_modules(sample, tmp_path)


def test_generation_and_sft_load_no_training_code():
    code = ("import sys, mmrl.generation, mmrl.generation.hf, mmrl.generation.server, mmrl.generation.http, "
            "mmrl.sft.trainer, mmrl.workflow.builders\n"
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
