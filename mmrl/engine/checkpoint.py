"""Atomic checkpoints with exact resume.

Layout: `<run_dir>/checkpoints/step-N/` holds the HF-format model (or LoRA adapter), the processor, and
`trainer_state.pt` (optimizer, scheduler, RNG states, data position, stage state, counters). A checkpoint is written
into a staging directory, every file fsynced, the completion marker written last, then the directory renamed into
place: a process killed mid-save leaves only a staging directory, which `find_latest` ignores.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmrl.errors import UserError

MARKER = "COMPLETE"
STATE_FILE = "trainer_state.pt"
STEP_DIR = re.compile(r"^step-(\d+)$")


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_tree(path: Path) -> None:
    for root, _dirs, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def checkpoints_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def is_complete(path: Path) -> bool:
    return path.is_dir() and STEP_DIR.match(path.name) is not None and (path / MARKER).is_file()


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if is_complete(p)]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def find_latest(run_dir: str | os.PathLike) -> Path | None:
    complete = list_checkpoints(run_dir)
    return complete[-1] if complete else None


def resolve_resume(resume: str | None, run_dir: str | os.PathLike) -> Path | None:
    """`trainer.resume`: None -> fresh; 'auto' -> latest complete checkpoint (or fresh); a path -> that checkpoint."""
    if resume in (None, "", "none", "null"):
        return None
    if resume == "auto":
        return find_latest(run_dir)
    path = Path(resume)
    if not path.is_dir():
        raise UserError(f"trainer.resume: '{resume}' is not a directory; give a checkpoints/step-N path or 'auto'")
    if not (path / MARKER).is_file() or not (path / STATE_FILE).is_file():
        raise UserError(f"trainer.resume: '{resume}' is not a complete mmrl checkpoint (no {MARKER} marker); "
                        "pick another checkpoint or use 'auto'")
    return path


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    model: torch.nn.Module,
    state: dict[str, Any],
    processor: Any = None,
    keep_last: int = 2,
) -> Path:
    """Write checkpoint `step` atomically and prune all but the last `keep_last` complete ones."""
    from mmrl.models.processor import save_processor

    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    staging = root / f".step-{step}.staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    model.save_pretrained(staging, safe_serialization=True)
    if processor is not None:
        save_processor(processor, staging)
    torch.save(state, staging / STATE_FILE)
    _fsync_tree(staging)
    (staging / MARKER).write_text(f"step {step}\n")
    _fsync_tree(staging)
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_trainer_state(path: Path) -> dict[str, Any]:
    return torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)


def load_model_weights(model: torch.nn.Module, path: Path) -> None:
    """Load the weights saved by `save_checkpoint` into an already-built model (full model or LoRA adapter)."""
    adapter = path / "adapter_model.safetensors"
    if adapter.is_file():
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(str(adapter)))
        return
    # Let transformers map its on-disk key names onto the live model's (they differ for Qwen2.5-VL).
    try:
        loaded = type(model).from_pretrained(path, dtype=next(model.parameters()).dtype)
    except OSError as err:
        raise UserError(f"{path}: cannot read the model weights of this checkpoint ({str(err).splitlines()[0]})") from None
    model.load_state_dict(loaded.state_dict(), strict=True)
