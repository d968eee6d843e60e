"""Real training processes for the multi-process tests: one plain process, or two under `accelerate launch` with a
CPU preset (gloo), each running a fixture script from tests/fixtures/trainer/."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "trainer"
CONFIG = ROOT / "configs" / "tests" / "grpo_tiny.yaml"
PRESETS = {
    "ddp": ROOT / "configs" / "accelerate" / "ddp_cpu_2proc.yaml",
    "fsdp2": ROOT / "configs" / "accelerate" / "fsdp_cpu_2proc.yaml",
    "deepspeed": ROOT / "configs" / "accelerate" / "deepspeed_zero2_cpu_2proc.yaml",
}


def errors(stderr: str) -> str:
    """The error lines of a failed launch (its full stderr is mostly the two ranks' interleaved tracebacks)."""
    # "error" in any case: mmrl's own one-line errors read "mmrl train: error: ..."; the tail too, for a rank that died
    # without a Python error (a signal, a gloo abort), whose cause is only in its last lines
    lines = stderr.splitlines()
    return "\n".join([line for line in lines if "error" in line.lower()][-30:] + ["--- last lines:"] + lines[-40:])


def launcher(engine: str, port_args: Any) -> list[str]:
    """The command prefix of one process (`engine` "one") or of a 2-process launch with the engine's CPU preset."""
    if engine == "one":
        return [sys.executable]
    return [sys.executable, "-m", "accelerate.commands.launch", *port_args(), "--config_file", str(PRESETS[engine])]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    """Run `cmd` from the repository root with one thread per process; fail the test with its error lines."""
    # this checkout's code in every process, whatever package the environment has installed
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert done.returncode == 0, errors(done.stderr)
    return done


def train_args(data: Path) -> list[str]:
    """Overrides shared by the GRPO launches: 2 prompts x G=4 per step, 5 tokens, fp32 on CPU, a reward with spread."""
    return [f"data.train={data}", "trainer.report_to=[jsonl]", "trainer.progress=false", "trainer.save_steps=0",
            "trainer.sample_steps=0", "trainer.prompts_per_step=2", "rollout.max_completion_length=5",
            "model.dtype=fp32", "trainer.device=cpu", "optimizer.lr=1e-3",
            f"rewards=[{{name: '{FIXTURES / 'varied_reward.py'}:reward'}}]"]


def world_size_run(engine: str, out: Path, port_args: Any, args: list[str]) -> Path:
    """GRPO through tests/fixtures/trainer/world_size_run.py (every rank records its view in OUT/rank-R.json, rank 0
    saves OUT/final.pt); returns `out`."""
    out.mkdir(parents=True, exist_ok=True)
    run([*launcher(engine, port_args), str(FIXTURES / "world_size_run.py"), str(CONFIG), str(out), *args])
    return out


def ranks(out: Path, world: int = 2) -> list[dict[str, Any]]:
    """What each rank of a world_size_run recorded (proof that `world` processes ran)."""
    return [json.loads((out / f"rank-{r}.json").read_text()) for r in range(world)]


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest absolute element difference between two state dicts with the same keys."""
    assert sorted(a) == sorted(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)
