"""Which vLLM releases go with which torch, and the one-line refusal when the installed pair does not match.

Every vLLM release pins one torch build (`torch==X` in its metadata), so installing vLLM replaces whatever torch is
there. mmrl therefore has one extra per torch (`mmrl[vllm-torch213]` ...; pyproject.toml), whose vLLM range holds
only releases built for that torch, and `rollout.backend=vllm` checks the installed pair before anything loads:
a vLLM built for another torch (installed with --no-deps, or torch reinstalled after it) would fail deep inside
its CUDA kernels. The ranges come from the releases' metadata on PyPI (0.23-0.26: torch 2.11.0, 0.27-0.32:
2.13.0, 0.33-0.34: 2.14.0); tests/unit/test_vllm_pairs.py checks they match pyproject's extras.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Pair:
    torch: str  # major.minor
    extra: str  # the mmrl extra that installs this pair
    low: str  # first vLLM release mmrl pairs with this torch (inclusive; 0.21-0.22 pin torch 2.11 too, left out)
    high: str  # first release built for the next torch (exclusive)


PAIRS = (
    Pair("2.11", "vllm-torch211", "0.23.0", "0.27"),
    Pair("2.13", "vllm-torch213", "0.27.0", "0.33"),
    Pair("2.14", "vllm-torch214", "0.33.0", "0.35"),
)


def _release(version: str) -> tuple[int, ...]:
    """(0, 27, 1) for '0.27.1', '0.27.1+cu129', '0.27.1rc2' (local and pre-release parts do not matter here)."""
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0].split("rc")[0])[:3])


def _minor(torch_version: str) -> str:
    return ".".join(torch_version.split("+")[0].split(".")[:2])


def pairs_text() -> str:
    return "; ".join(f'torch {p.torch}: pip install "mmrl[{p.extra}]" (vLLM >={p.low},<{p.high})' for p in PAIRS)


def install_hint(torch_version: str) -> str:
    """What to install for vLLM next to `torch_version`, or the pairs there are when none matches it."""
    for pair in PAIRS:
        if pair.torch == _minor(torch_version):
            return f'pip install "mmrl[{pair.extra}]" (vLLM >={pair.low},<{pair.high}, built for torch {pair.torch})'
    return f"no vLLM release mmrl is paired with is built for torch {torch_version}; the pairs: {pairs_text()}"


def pinned_torch(requires: list[str] | None) -> str | None:
    """The torch version a vLLM's requirements pin (`torch==2.13.0` -> '2.13.0'); None when they pin none."""
    for requirement in requires or []:
        found = re.fullmatch(r"torch\s*==\s*([\w.+]+)\s*(;.*)?", requirement.strip())
        if found and not (found.group(2) and "extra" in found.group(2)):
            return found.group(1)
    return None


def pair_problem(vllm_version: str, vllm_requires: list[str] | None, torch_version: str) -> str | None:
    """None when this vLLM and this torch are a pair mmrl supports; else one line saying what to install."""
    pinned = pinned_torch(vllm_requires)
    if pinned is not None and _release(pinned) != _release(torch_version):
        return (f"vllm {vllm_version} is built for torch {pinned} but torch {torch_version} is installed: "
                f"{install_hint(torch_version)}, or pip install 'torch=={pinned}'")
    version = _release(vllm_version)
    if not any(_release(p.low) <= version < _release(p.high) for p in PAIRS):
        return f"vllm {vllm_version} is not a release mmrl is paired with: {install_hint(torch_version)}"
    return None
