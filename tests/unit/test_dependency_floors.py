"""Every floor pyproject.toml states is a version the compatibility job (.ci/compat) installs and tests."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
ROOT = Path(__file__).resolve().parents[2]
CHECKED = ("torch", "transformers", "accelerate", "peft", "datasets")
# torch's floor is the GPU machines' 2.11 (pyproject says why); CI can only install the 2.13.0 CPU wheel.
NOT_INSTALLABLE_HERE = {"torch": "2.11"}


def floors() -> dict[str, str]:
    found = {}
    for requirement in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([\d.]+)(,<[\d.]+)?", requirement.replace(" ", ""))
        if match and match.group(1) in CHECKED:
            found[match.group(1)] = match.group(2)
    return found


def compat_pins() -> dict[str, str]:
    lines = (ROOT / ".ci" / "floors.txt").read_text().splitlines()
    return dict(line.split("==") for line in lines if line.strip() and not line.startswith("#"))


def _release(version: str) -> tuple[int, ...]:
    """(5, 17, 0) for '5.17', '5.17.0', '5.17.0+cpu'."""
    parts = [int(part) for part in version.split("+")[0].split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def test_each_floor_is_what_the_compat_job_installs():
    stated, pins = floors(), compat_pins()
    assert sorted(stated) == sorted(CHECKED) and sorted(pins) == sorted(CHECKED)
    for name in CHECKED:
        if name in NOT_INSTALLABLE_HERE:
            assert stated[name] == NOT_INSTALLABLE_HERE[name] and _release(pins[name]) >= _release(stated[name])
            continue
        assert _release(pins[name]) == _release(stated[name]), name


def test_every_extra_the_docs_and_scripts_name_exists():
    """`pip install "mmrl[vllm]"` only warns that the extra does not exist and installs no vLLM: the README and
    scripts/gpu_check.sh still named that extra after it became one per torch (vllm-torch211/213/214)."""
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    files = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "scripts").rglob("*.sh"),
             *(ROOT / "mmrl").rglob("*.py")]
    named = {}
    for path in files:
        for found in re.finditer(r"""(?:mmrl|["']\.)\[([A-Za-z0-9_,-]+)\]""", path.read_text()):
            for extra in found.group(1).split(","):
                named.setdefault(extra, path.relative_to(ROOT).as_posix())
    assert "vllm-torch213" in named and "dev" in named
    assert {extra: where for extra, where in named.items() if extra not in extras} == {}


def test_no_floor_is_below_what_the_tested_floors_themselves_require():
    """A floor no install can reach is not a tested floor (tokenizers>=0.21 and safetensors>=0.4 were stated while
    transformers 5.17 requires >=0.23.1 and >=0.8). Checked where the floors are installed: the compat job."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    installed = {name: metadata.version(name) for name in CHECKED}
    if any(_release(installed[name]) != _release(version) for name, version in floors().items()
           if name not in NOT_INSTALLABLE_HERE):
        pytest.skip("the floors are not what is installed here (the compat job installs them)")
    ours = {}
    for text in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        requirement = Requirement(text)
        low = [spec.version for spec in requirement.specifier if spec.operator in (">=", "==")]
        if low:
            ours[canonicalize_name(requirement.name)] = low[0]
    below = []
    for name in CHECKED:
        for text in metadata.requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker is not None and "extra" in str(requirement.marker):
                continue
            floor = ours.get(canonicalize_name(requirement.name))
            if floor is not None and not requirement.specifier.contains(floor, prereleases=True):
                below.append(f"{requirement.name}>={floor} (mmrl) vs {requirement} ({name} {installed[name]})")
    assert below == []
