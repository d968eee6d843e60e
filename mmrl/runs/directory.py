"""The run directory's guards: writable before anything runs, one run at a time (a lock), no silent overwrite.

`claim_run_dir(cfg)` is the first thing a trainer does after the config validated: it checks `trainer.output_dir`
can be written, locks it (a second run on it exits naming the first one's pid), and refuses to start a fresh run
over an earlier one's files unless `trainer.resume` or `trainer.overwrite=true` says what to do with them. Only then
is anything written there.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import sys
import tempfile
from pathlib import Path

from mmrl.errors import UserError

LOCK_FILE = ".mmrl.lock"
# What a run writes; their presence means the directory holds an earlier run.
RUN_MARKERS = ("metrics.jsonl", "checkpoints", "config.yaml")
# configs/: each segment's config (a fresh start and every resume), see run_config.py
RUN_FILES = (*RUN_MARKERS, "configs", "samples", "tb", "eval", "bad_images.jsonl", "plots", "model_interface.json")


def check_output_dir(path: str | os.PathLike, field: str) -> Path:
    """One-line errors for an output directory that is a file, lies under a file, or cannot be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{field}: '{path}' is a file, not a directory; give a directory path")
    ancestor = path.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"{field}: cannot create '{path}': '{ancestor}' is a file; give a directory path")
    # os.access says yes to root on a read-only file system: only an actual write tells.
    try:
        handle, probe = tempfile.mkstemp(dir=ancestor, prefix=".mmrl-write-check-")
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        raise UserError(f"{field}: cannot write in '{ancestor}' ({err.strerror}); give a writable directory") from None
    return path


class RunDirLock:
    """An exclusive `flock` on `<run_dir>/.mmrl.lock`, holding the owner's pid (the kernel drops it when the owner
    dies, however it dies, so a lock file left behind is recognised as stale and taken over)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / LOCK_FILE
        self._fd: int | None = None
        self._created = False

    def acquire(self) -> None:
        self._created = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                raise UserError(
                    f"trainer.output_dir: {self.run_dir} is in use by another mmrl run (pid {holder or 'unknown'}); "
                    "wait for it to finish or give this run another trainer.output_dir"
                ) from None
            except OSError as err:
                if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                # Some network file systems have no locks: run unlocked rather than not at all, and say so.
                os.close(fd)
                print(f"{self.run_dir}: this file system cannot lock files ({err.strerror}); make sure no other run "
                      "uses this directory", file=sys.stderr)
                return
            # The holder may have removed the file between our open and our lock: lock the file now at the path.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        stale = _read_pid(fd)
        if stale is not None and stale != os.getpid():
            print(f"{self.run_dir}: taking over the stale lock of pid {stale} (no longer running)", file=sys.stderr)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self._fd)  # closing drops the flock
        self._fd = None
        if self._created:  # a run that failed before writing anything leaves no empty directory behind
            try:
                self.run_dir.rmdir()
            except OSError:
                pass


def _read_pid(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


_HELD: dict[Path, RunDirLock] = {}
_LAST: list[Path] = []  # the run directory this process claimed last (what an interrupted run resumes from)


def last_claimed() -> Path | None:
    return _LAST[-1] if _LAST else None


def is_main_launch_process() -> bool:
    """Rank 0 of an `accelerate launch` / torchrun job (or a plain process): the one that owns the run directory."""
    return os.environ.get("RANK", "0") == "0"


def used_run_files(run_dir: Path) -> list[str]:
    return [name for name in RUN_MARKERS if (run_dir / name).exists()]


def ran_a_step(run_dir: Path) -> bool:
    """Whether a run in `run_dir` got as far as a step: a metrics row or a checkpoint. A run that stopped before
    (a setting refused once the model loaded, a crash while loading) leaves only config.yaml and empty logs, which
    must not block its corrected re-run."""
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        with open(metrics, "rb") as handle:  # the first bytes tell: a long run's file need not be read whole
            if handle.read(4096).strip():
                return True
    checkpoints = run_dir / "checkpoints"
    return checkpoints.is_dir() and any(checkpoints.iterdir())


def _remove_run_files(run_dir: Path) -> None:
    for name in RUN_FILES:
        target = run_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def claim_run_dir(run_dir: str | os.PathLike, resume: str | None, overwrite: bool) -> Path:
    """Check, lock and (with overwrite) clear `run_dir` for a training run; idempotent within one process."""
    run_dir = Path(run_dir)
    key = run_dir.absolute()
    _LAST[:] = [run_dir]
    if key in _HELD or not is_main_launch_process():
        return run_dir
    check_output_dir(run_dir, "trainer.output_dir")
    lock = RunDirLock(run_dir)
    lock.acquire()
    try:
        used = used_run_files(run_dir)
        if used and not ran_a_step(run_dir):
            # nothing of that run is worth keeping (no step ran); said, not silent
            _remove_run_files(run_dir)
            print(f"trainer.output_dir: {run_dir} held a run that stopped before its first step ({', '.join(used)});"
                  " starting this run there", file=sys.stderr)
        elif used and resume in (None, "", "none", "null"):
            if not overwrite:
                raise UserError(
                    f"trainer.output_dir: {run_dir} already holds a run ({', '.join(used)}); continue it with "
                    "trainer.resume=auto, give another trainer.output_dir, or replace it with trainer.overwrite=true"
                )
            _remove_run_files(run_dir)
            print(f"trainer.overwrite=true: removed the earlier run's files in {run_dir}", file=sys.stderr)
    except BaseException:
        lock.release()
        raise
    _HELD[key] = lock
    return run_dir


def discard_fresh_run(run_dir: str | os.PathLike) -> None:
    """Remove what a run that started in an unused directory wrote before it was refused (config.yaml, an empty
    metrics.jsonl, tb/), so the command the refusal asks for can be run as it is; then release the directory."""
    if is_main_launch_process():
        for name in RUN_FILES:
            target = Path(run_dir) / name
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            elif target.exists():
                target.unlink()
    release_run_dir(run_dir)


def release_run_dir(run_dir: str | os.PathLike) -> None:
    lock = _HELD.pop(Path(run_dir).absolute(), None)
    if lock is not None:
        lock.release()


def release_all() -> None:
    for key in list(_HELD):
        release_run_dir(key)
