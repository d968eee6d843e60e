"""`pytest -m gpu tests/` on the GPU machine collects every test module before it filters by marker, so no module may
import, at its top level (directly or through mmrl's modules), a package that machine's image lacks and that does not
travel as a wheel (scripts/gpu_wheels.txt): one such import aborts the whole collection there."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = ("mmrl", "data_pipelines", "demos", "tests", "benchmarks")
# Import names the GPU image (Python 3.12, torch 2.11+cu130, transformers 5.17, accelerate 1.15, peft, pytest, httpx,
# opencv, pyarrow, matplotlib, tensorboard, sympy...) lacks: the dev/serve/demo/vllm/gpu/deepspeed extras'. The
# wheels scripts/gpu_prepare.sh carries (pydantic, math-verify and their needs) are not in this set.
MISSING_ON_GPU_IMAGE = {
    "openai",
    "fastapi",
    "starlette",
    "uvicorn",
    "gradio",
    "gradio_client",
    "playwright",
    "trl",
    "deepspeed",
    "datasets",
    "dill",
    "multiprocess",
    "vllm",
    "flash_attn",
}


def module_file(name: str) -> Path | None:
    path = ROOT.joinpath(*name.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _guarded(handlers: list[ast.ExceptHandler]) -> bool:
    """A try whose except catches ImportError (or broader): its body's imports may fail."""
    names = ("ImportError", "ModuleNotFoundError", "Exception", "BaseException")
    return any(h.type is None or any(n in ast.unparse(h.type) for n in names) for h in handlers)


def skips_on_gpu_image(node: ast.stmt) -> bool:
    """`pytest.importorskip("<a package the image lacks>")`: the module stops there (skipped) on the GPU image."""
    for call in ast.walk(node):
        if (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and call.func.attr == "importorskip"
            and call.args
            and isinstance(call.args[0], ast.Constant)
            and str(call.args[0].value).split(".")[0] in MISSING_ON_GPU_IMAGE
        ):
            return True
    return False


def import_time_imports(path: Path, module: str) -> list[str]:
    """The modules `module` imports when it is imported: statements outside functions, outside `if TYPE_CHECKING`
    and outside try blocks that catch ImportError, up to a module-level importorskip of a package the image lacks."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: list[str] = []
    body = ast.parse(path.read_text(encoding="utf-8")).body
    for index, node in enumerate(body):
        if skips_on_gpu_image(node):
            body = body[:index]
            break

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if isinstance(node, ast.Import):
                found.extend(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package[: len(package) - (node.level - 1)]
                    base = ".".join(parent + ([node.module] if node.module else []))
                found.append(base)
                found.extend(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
            elif isinstance(node, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                if not _guarded(node.handlers):
                    visit(node.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, (ast.With, ast.For, ast.While, ast.ClassDef)):
                visit(node.body)

    visit(body)
    return found


def sibling_module(name: str, importer: Path) -> str | None:
    """The first-party module a bare `import name` reaches through a `sys.path.insert(0, <the importer's folder>)`
    (tests/unit's helpers, e.g. trl_referee), as a dotted name from the root; None when no such file lies there."""
    candidate = importer.parent / f"{name}.py"
    if not candidate.is_file() or ROOT not in candidate.parents:
        return None
    return ".".join(candidate.relative_to(ROOT).with_suffix("").parts)


def missing_imports(module: str, seen: dict[str, set[tuple[str, str]]]) -> set[tuple[str, str]]:
    """(missing package, the module importing it) for everything importing `module` runs, first-party modules
    followed transitively (a package's __init__ included)."""
    if module in seen:
        return seen[module]
    seen[module] = set()
    path = module_file(module)
    if path is None:
        return set()
    parts = module.split(".")
    result: set[tuple[str, str]] = set()
    for i in range(1, len(parts)):
        result |= missing_imports(".".join(parts[:i]), seen)
    for name in import_time_imports(path, module):
        top = name.split(".")[0]
        if top in MISSING_ON_GPU_IMAGE:
            result.add((top, module))
        elif top in FIRST_PARTY:
            result |= missing_imports(name, seen)
        elif (sibling := sibling_module(top, path)) is not None:
            result |= missing_imports(sibling, seen)
    seen[module] = result
    return result


def test_every_test_module_collects_without_the_packages_the_gpu_image_lacks():
    seen: dict[str, set[tuple[str, str]]] = {}
    offenders = {}
    for path in sorted((ROOT / "tests").rglob("*.py")):
        if path.name.startswith("test_") or path.name == "conftest.py":
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found = missing_imports(module, seen)
            if found:
                offenders[module] = sorted(found)
    assert not offenders, (
        "these test modules import, when collected, packages the GPU image lacks (use "
        f"pytest.importorskip or import inside the test): {offenders}"
    )


def test_the_scan_sees_imports_through_mmrl_modules():
    """The scan follows first-party imports: mmrl's server imports fastapi at its top, so a test module importing it
    at its top would abort the GPU machine's collection."""
    assert ("fastapi", "mmrl.generation.server") in missing_imports("mmrl.generation.server", {})
    assert missing_imports("mmrl.rl.trainer", {}) == set()  # the training code imports only what travels


def test_the_scan_stops_at_an_importorskip_of_a_missing_package(tmp_path):
    source = "import pytest\nopenai = pytest.importorskip('openai')\nimport uvicorn\n"
    (tmp_path / "probe.py").write_text(source)
    assert import_time_imports(tmp_path / "probe.py", "probe") == ["pytest"]
    (tmp_path / "probe.py").write_text(source.replace("importorskip('openai')", "importorskip('numpy')"))
    assert "uvicorn" in import_time_imports(tmp_path / "probe.py", "probe")


def test_the_scan_follows_a_helper_imported_from_the_test_folder():
    """tests/unit's loss tests put their folder on sys.path and `from trl_referee import ...`: the scan follows that
    helper (it missed it, and trl, which the image lacks, aborted the GPU machine's collection)."""
    importer = ROOT / "tests" / "unit" / "test_entropy_controls.py"
    assert sibling_module("trl_referee", importer) == "tests.unit.trl_referee"
    assert sibling_module("no_such_helper", importer) is None
    assert "trl_referee" in {
        name.split(".")[0] for name in import_time_imports(importer, "tests.unit.test_entropy_controls")
    }
