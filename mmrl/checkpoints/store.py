"""Atomic checkpoints with exact resume.

Layout: `<run_dir>/checkpoints/step-N/` holds the HF-format model (or LoRA adapter), the processor, and
`trainer_state.pt` (optimizer, scheduler, RNG states, data position, stage state, counters). A checkpoint is written
into a staging directory, every file fsynced, the completion marker written last, then the directory renamed into
place: a process killed mid-save leaves only a staging directory, which `find_latest` ignores.
"""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmrl.errors import UserError
from mmrl.faults import fault_point

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


def tell(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def checkpoint_problem(path: Path) -> str | None:
    """What makes checkpoint `path` unusable (naming the file), or None when it looks loadable.

    Cheap checks only: the trainer state must be a complete torch archive (its directory sits at the end of the file,
    so a truncated file fails), every weights file a safetensors file whose header matches its size.
    """
    state = path / STATE_FILE
    if not state.is_file():
        return f"{state} is missing"
    if not zipfile.is_zipfile(state):
        return f"{state} is damaged (not a complete torch archive)"
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        return f"{path} has no *.safetensors weights"
    from safetensors import safe_open

    for file in weights:
        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except Exception as err:  # safetensors raises its own error types for every kind of damage
            return f"{file} is damaged ({str(err).splitlines()[0][:120]})"
    return None


def resolve_resume(resume: str | None, run_dir: str | os.PathLike,
                   say: Callable[[str], None] | None = tell) -> Path | None:
    """`trainer.resume`: None -> fresh; 'auto' -> latest usable complete checkpoint (or fresh); a path -> that one.

    With 'auto' a damaged checkpoint is skipped for the previous complete one, and `say` tells the user so (and that
    the run starts fresh when there is none); an explicitly named damaged checkpoint is an error naming the file.
    """
    say = say or (lambda _message: None)
    if resume in (None, "", "none", "null"):
        return None
    if resume == "auto":
        complete = list_checkpoints(run_dir)
        for path in reversed(complete):
            problem = checkpoint_problem(path)
            if problem is None:
                if path != complete[-1]:
                    say(f"trainer.resume=auto: falling back to the previous complete checkpoint {path}")
                return path
            say(f"trainer.resume=auto: skipping damaged checkpoint {path}: {problem}")
        where = checkpoints_dir(run_dir)
        say(f"trainer.resume=auto: no usable checkpoint in {where}; starting fresh" if complete else
            f"trainer.resume=auto: no checkpoint in {where} yet; starting fresh")
        return None
    path = Path(resume)
    if not path.is_dir():
        raise UserError(f"trainer.resume: '{resume}' is not a directory; give a checkpoints/step-N path or 'auto'")
    if not (path / MARKER).is_file():
        raise UserError(f"trainer.resume: '{resume}' is not a complete mmrl checkpoint (no {MARKER} marker); "
                        "pick another checkpoint or use 'auto'")
    problem = checkpoint_problem(path)
    if problem is not None:
        raise UserError(f"trainer.resume: {problem}; pick another checkpoint or use 'auto' (it skips damaged ones)")
    return path


def check_weights_kind(path: Path, lora: bool) -> None:
    """A LoRA checkpoint holds only the adapter, any other the whole model: resuming one under the other's
    `model.lora.enabled` cannot load (every engine's loader would fail its own way), so say which setting fits."""
    saved_lora = (path / "adapter_model.safetensors").is_file()
    if saved_lora != lora:
        held = "a LoRA adapter" if saved_lora else "whole model weights (no LoRA adapter)"
        raise UserError(f"trainer.resume: {path} holds {held} but model.lora.enabled is {str(lora).lower()}; "
                        f"resume it with model.lora.enabled={str(saved_lora).lower()}")


def _clear_dead_staging(root: Path) -> None:
    """Staging directories of processes killed mid-save: never renamed into place, safe to delete."""
    for path in root.glob(".step-*.staging-*"):
        pid = path.name.rpartition("-")[2]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    model: torch.nn.Module,
    state: dict[str, Any],
    processor: Any = None,
    keep_last: int = 2,
    weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write checkpoint `step` atomically and prune all but the last `keep_last` complete ones.

    `weights`: the model's whole state dict when the live model holds only shards (FSDP2: gathered by every process
    through torch.distributed.checkpoint before the main process calls this); the directory is a plain HF one."""
    from mmrl.models.processor import save_processor

    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    _clear_dead_staging(root)
    final = root / f"step-{step}"
    staging = root / f".step-{step}.staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        model.save_pretrained(staging, safe_serialization=True, **({"state_dict": weights} if weights else {}))
        if processor is not None:
            save_processor(processor, staging)
        fault_point("save.staged")  # crash tests: die (or run out of space) before the checkpoint is complete
        torch.save(state, staging / STATE_FILE)
        _fsync_tree(staging)
        (staging / MARKER).write_text(f"step {step}\n")
        _fsync_tree(staging)
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)  # free what the failed save took; the previous one is untouched
        previous = find_latest(run_dir)
        kept = f"the previous checkpoint {previous} is intact" if previous else "there is no earlier checkpoint"
        reason = "the disk is full" if err.errno in (errno.ENOSPC, errno.EDQUOT) else err.strerror or str(err)
        raise UserError(f"could not save checkpoint step-{step} in {root}: {reason}; {kept}. Free space (or fix "
                        "the directory) and continue with trainer.resume=auto") from None
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
    try:
        return torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError) as err:  # missing, truncated or not a torch archive
        raise UserError(f"{path / STATE_FILE}: cannot read the trainer state ({str(err).splitlines()[0][:120]}); "
                        "resume from another checkpoint or use trainer.resume=auto") from None


def load_model_weights(model: torch.nn.Module, path: Path) -> None:
    """Load the weights saved by `save_checkpoint` into an already-built model (full model or LoRA adapter)."""
    weights, strict = read_checkpoint_weights(model, path)
    model.load_state_dict(weights, strict=strict)


def read_checkpoint_weights(model: Any, path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """The weights `save_checkpoint` wrote in `path`, under `model`'s live parameter names, and whether they cover
    the whole model (strict) — the one reader every engine's resume uses (FSDP2 scatters them into its shards).

    LoRA: only the adapter was saved (checked both ways against the live adapter: another model.lora.r or target
    set is one line); the frozen base stays as loaded. Otherwise the whole model, read with the live config."""
    adapter = path / "adapter_model.safetensors"
    if adapter.is_file():
        return read_adapter_weights(model, adapter), False
    return read_whole_weights(model, path), True


# The key under which a DeepSpeed ZeRO checkpoint keeps its optimizer state: every process's partition, in rank order.
ZERO_PARTITIONS = "deepspeed_zero"


def check_optimizer_kind(state: Any, engine: str, world_size: int, partitioned: bool) -> None:
    """A checkpoint's optimizer state fits the engine resuming it (`engine` names it in the messages; `partitioned`:
    its optimizer state is ZeRO partitions), else one line saying what would: ZeRO partitions load only under
    DeepSpeed with the same number of processes, and DeepSpeed loads nothing else."""
    parts = state.get(ZERO_PARTITIONS) if isinstance(state, dict) else None
    if not partitioned:
        if parts is not None:
            raise UserError(f"trainer.resume: this checkpoint's optimizer state is DeepSpeed ZeRO partitions; resume "
                            f"it under the DeepSpeed preset it was written with (this run's engine: {engine})")
        return
    if parts is None or len(parts) != world_size:
        saved = "a run without DeepSpeed" if parts is None else f"{len(parts)} processes"
        raise UserError(f"trainer.resume: the checkpoint's optimizer state is from {saved}; resume a DeepSpeed "
                        f"checkpoint with the same number of processes ({world_size})")


def read_adapter_weights(policy: Any, adapter: Path) -> dict[str, torch.Tensor]:
    """A saved LoRA adapter's tensors under the live peft model's parameter names (peft writes them without the
    adapter's name: `...q_proj.lora_A.weight` on disk is `...q_proj.lora_A.default.weight` live)."""
    from safetensors.torch import load_file

    name = policy.active_adapter
    params = dict(policy.named_parameters())
    live = {k.replace(f".{name}.", ".").removesuffix(f".{name}"): k for k in params}
    saved = load_file(str(adapter))
    # a name this model lacks, or another shape (another model.lora.r): the checkpoint is another adapter
    foreign = sorted(k for k, v in saved.items() if k not in live or tuple(v.shape) != tuple(params[live[k]].shape))
    if foreign:
        raise UserError(f"{adapter}: {len(foreign)} adapter tensors match no LoRA parameter of this model by name and "
                        f"shape (e.g. {foreign[0]}); resume with the model.lora settings the checkpoint was written with")
    # and the reverse: an adapter of the live model the checkpoint lacks would silently restart from its initial value
    missing = sorted(k for k, v in live.items() if v != k and k not in saved)
    if missing:
        raise UserError(f"{adapter}: lacks {len(missing)} adapter tensors this model has (e.g. {missing[0]}); resume "
                        "with the model.lora settings the checkpoint was written with")
    return {live[k]: v for k, v in saved.items()}


def read_whole_weights(model: torch.nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """A whole-model checkpoint's state dict under `model`'s parameter names (every engine's resume reads it so)."""
    # Let transformers map its on-disk key names onto the live model's (they differ for Qwen2.5-VL).
    try:
        # config=: the live model's own, never the checkpoint's config.json: a damaged `{}` there meant the class
        # defaults (a 7B model, allocated before any weight is read: the process was killed for memory).
        loaded = type(model).from_pretrained(path, config=model.config, dtype=next(model.parameters()).dtype)
    except Exception as err:  # OSError, safetensors' own errors: all mean a damaged or foreign checkpoint
        raise UserError(f"{path}: cannot read the model weights of this checkpoint "
                        f"({type(err).__name__}: {str(err).splitlines()[0][:120]})") from None
    return loaded.state_dict()
