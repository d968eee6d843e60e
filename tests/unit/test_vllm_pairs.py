"""vLLM/torch pairs: the refusal at `rollout.backend=vllm` start and pyproject's per-torch extras agree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mmrl.generation.vllm_pairs import PAIRS, install_hint, pair_problem

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
ROOT = Path(__file__).resolve().parents[2]
# Requirements as vLLM releases publish them (PyPI metadata of 0.26.0 and 0.34.0).
VLLM_026 = ["transformers>=5.5.3", "torch==2.11.0", "torchaudio==2.11.0", "torchvision==0.26.0"]
VLLM_034 = ["transformers<5.23.0,>=5.16.1", "torch==2.14.0", "torchvision==0.29.0", "pytest; extra == 'test'"]


def test_a_vllm_built_for_the_installed_torch_passes():
    assert pair_problem("0.26.0", VLLM_026, "2.11.0+cu128") is None
    assert pair_problem("0.34.0", VLLM_034, "2.14.0") is None


def test_a_vllm_built_for_another_torch_is_one_line_naming_the_pair():
    problem = pair_problem("0.34.0", VLLM_034, "2.13.0+cpu")
    assert "\n" not in problem
    assert "built for torch 2.14.0 but torch 2.13.0+cpu is installed" in problem
    assert 'pip install "mmrl[vllm-torch213]"' in problem and "pip install 'torch==2.14.0'" in problem


def test_a_release_outside_the_pairs_and_a_torch_without_one():
    assert "not a release mmrl is paired with" in pair_problem("0.22.0", ["torch==2.11.0"], "2.11.0")
    hint = install_hint("2.12.1")
    assert "no vLLM release" in hint and all(f"mmrl[{p.extra}]" in hint for p in PAIRS)


def test_the_pairs_are_pyprojects_extras():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "vllm" not in extras  # a plain vLLM requirement replaces the installed torch
    for pair in PAIRS:
        assert sorted(extras[pair.extra]) == sorted([f"vllm>={pair.low},<{pair.high}", f"torch=={pair.torch}.*"])
    readme = (ROOT / "docs" / "compatibility.md").read_text()
    for pair in PAIRS:  # the compatibility page's table of tested pairs
        assert re.search(rf"\| *{re.escape(pair.torch)}\S* *\|.*{re.escape(pair.extra)}", readme), pair.extra
