"""Static check: training, generation, engine and eval code never creates a tensor on the CPU by accident.

A tensor factory without `device=` makes a CPU tensor; on a GPU run it then meets CUDA tensors (and CUDA generators,
and NCCL) and PyTorch raises — or it silently syncs. This test finds every such call with the `ast` module, so the
class of bug is caught on a CPU-only machine. `*_like` factories inherit their device and are not flagged. A call
that is CPU on purpose carries a `# cpu-ok: reason` comment on one of its lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# mmrl/generation: where rollouts, log-probs and sampling are moving (checked as soon as it exists).
CHECKED = ["mmrl/rl", "mmrl/eval", "mmrl/runs", "mmrl/parallel", "mmrl/checkpoints", "mmrl/sft", "mmrl/models", "mmrl/generation"]
FACTORIES = {
    "tensor", "as_tensor", "zeros", "ones", "empty", "full", "arange", "range", "linspace", "logspace", "eye",
    "rand", "randn", "randint", "randperm", "normal", "Generator", "empty_strided", "tril_indices", "triu_indices",
}
OPT_OUT = "# cpu-ok:"


def _is_torch_factory(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Attribute) and func.attr in FACTORIES and isinstance(func.value, ast.Name) \
            and func.value.id == "torch":
        return func.attr
    return None


def undeviced_factories(source: str, filename: str = "<source>") -> list[str]:
    """`file:line torch.X(...)` for every tensor factory without `device=` and without a `# cpu-ok:` comment."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if not isinstance(node, ast.Call):
            continue
        name = _is_torch_factory(node)
        if name is None:
            continue
        # `**kwargs` may carry it; an explicit `device=None` is the CPU default again.
        if any((kw.arg == "device" and not (isinstance(kw.value, ast.Constant) and kw.value.value is None))
               or kw.arg is None for kw in node.keywords):
            continue
        span = lines[node.lineno - 1: (node.end_lineno or node.lineno)]
        if any(OPT_OUT in line for line in span):
            continue
        found.append(f"{filename}:{node.lineno} torch.{name}(...)")
    return found


def _files() -> list[Path]:
    return sorted(p for d in CHECKED for p in (ROOT / d).rglob("*.py"))


def test_every_tensor_factory_names_its_device():
    assert _files(), "no source files found to check"
    problems = [hit for path in _files() for hit in undeviced_factories(path.read_text(), str(path.relative_to(ROOT)))]
    assert not problems, ("tensor factories without device= (pass the device of the tensor/model they meet, or add "
                          "'# cpu-ok: reason'):\n" + "\n".join(problems))


@pytest.mark.parametrize(
    ("source", "flagged"),
    [
        ("import torch\nx = torch.zeros(3)\n", 1),
        ("import torch\nx = torch.zeros(3, device=y.device)\n", 0),
        ("import torch\ng = torch.Generator()\n", 1),
        ("import torch\ng = torch.Generator(device='cuda')\n", 0),
        ("import torch\nx = torch.tensor(\n    [1, 2],\n    dtype=torch.long,\n)\n", 1),
        ("import torch\nx = torch.tensor(\n    [1, 2],  # cpu-ok: decoded on the host\n)\n", 0),
        ("import torch\nx = torch.zeros_like(y)\n", 0),
        ("import torch\nx = torch.arange(4, **where)\n", 0),
        ("import torch\nx = y.new_zeros(3)\n", 0),
        ("import torch\nx = torch.zeros(3, device=None)\n", 1),
        ('"""\n>>> torch.zeros(3)\n"""\n', 0),  # doctest examples are strings, not calls
    ],
)
def test_the_checker_flags_what_it_should(source, flagged):
    assert len(undeviced_factories(source)) == flagged


@pytest.mark.parametrize("name", ["mmrl.models.placement", "mmrl.models.tokens"])
def test_docstring_examples(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
