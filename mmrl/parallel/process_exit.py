"""How a process of a multi-process launch ends: `exit_process` (the `mmrl` CLI and the multi-process test fixtures
end through it; `mmrl.parallel.distributed.init_distributed` calls `joined_a_group`)."""

from __future__ import annotations

import atexit
import gc
import io
import os
import stat
import sys
import threading
import traceback

import torch.distributed as dist

_joined_here = False  # this process called init_process_group (through init_distributed)
_exiting = False  # exit_process is ending this process


def joined_a_group() -> None:
    """Record that this process made the process group; it leaves it at exit (and `exit_process` ends it)."""
    global _joined_here
    _joined_here = True
    atexit.register(_leave_process_group)


def has_joined_a_group() -> bool:
    return _joined_here


def ends_this_process() -> bool:
    """Whether `exit_process` called here ends the process (else it returns the status)."""
    return _joined_here and threading.current_thread() is threading.main_thread()


def _leave_process_group() -> None:
    """Leave the process group at exit (frees what it can; see `exit_process` for why that alone is not enough)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def exit_process(code: int) -> int:
    """End a process that joined a process group here with exit status `code`, without the interpreter's
    finalization; in a process that joined none, return `code` unchanged.

    Why: a gloo worker thread releases a finished collective's tensors after the caller has its result, and that
    release takes the GIL. When the thread is late (a loaded machine) and the interpreter is already finalizing,
    CPython ends the thread with pthread_exit, the unwind meets torch's noexcept destructor, and the process dies with
    SIGABRT ("terminate called without an active exception") after its work is done, failing the launch: seen in
    about 1 of 6 2-process CPU launches under load, always on a rank that finished first. Leaving the group does
    not stop those threads while a DistributedDataParallel wrapper still holds the group. So this does what a normal
    exit does up to finalization (wait for non-daemon threads, run the atexit handlers, which leave the group, finish
    the files still open, flush the standard streams) and then ends the process with os._exit, where no thread is
    ended by the interpreter.

    Called from a thread other than the main one (an application running the CLI in a thread), it returns `code` too:
    the process is the application's to end, and CPython's thread shutdown run from a non-daemon thread waits for that
    thread itself, forever."""
    global _exiting
    if not ends_this_process() or _exiting:  # _exiting: called again by an atexit handler of this exit
        return code
    _exiting = True
    # CPython's own exit steps before finalization (private, present in 3.10-3.14): threading's exit hooks (they stop
    # idle executor workers, which a plain join would wait on forever) and the join of non-daemon threads; then atexit,
    # which leaves the group (`joined_a_group`): only then, as in a normal exit, since a thread still running may use
    # it. As in a normal exit, a step that raises (a hook's error, Ctrl-C during the join) is reported and the next
    # one runs: the process still ends here, with `code`
    # The standard streams are flushed first as well: when a rank fails, the launcher ends the others (SIGTERM), and a
    # rank still joining its threads lost what it had printed (seen once in a suite run under load)
    for step in (_flush_standard_streams, threading._shutdown, atexit._run_exitfuncs, _flush_open_files,
                 _flush_standard_streams):
        try:
            step()
        except BaseException:  # noqa: BLE001
            _report(step.__name__)
    os._exit(code if -(2**31) <= code < 2**31 else code & 0xFF)  # a status past a C int: its low byte, as the OS keeps


def _flush_standard_streams() -> None:
    # sys.__stdout__ too: a sys.stdout replaced by an object that writes into it (a tee) may not flush it
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        if stream is None:  # started with that descriptor closed (`>&-`): Python then sets it to None
            continue
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed or broken pipe, a replacement without flush: try the next one
            pass


def _report(step: str) -> None:
    """Print the exception being handled as Python reports one it ignores at exit."""
    if sys.stderr is None:
        return
    try:
        print(f"Exception ignored at exit in {step}:", file=sys.stderr)
        traceback.print_exc()
    except Exception:  # noqa: BLE001 - stderr is a closed pipe
        pass


def _flush_open_files() -> None:
    """Finish every file on disk still open in this process, as finalization does when it frees them: a file opened
    for writing and never closed (a user reward's log, opened at import) would otherwise lose its buffered tail to
    os._exit. The io module's own files are flushed; any other file object (gzip, bz2, lzma, a user's class) is
    closed, as finalization does, since a compressed file writes its end only then. Outer files first: a text file
    hands its text to the compressor under it, which writes its end into the file under it. Pipes and sockets are left
    alone: a flush there can block on a reader that has stopped reading."""
    files: dict[int, io.IOBase] = {}
    for obj in gc.get_objects():
        if not issubclass(type(obj), io.IOBase):  # type(), not isinstance: a proxy's __class__ may raise
            continue
        try:
            if not obj.closed and stat.S_ISREG(os.fstat(obj.fileno()).st_mode):
                files[id(obj)] = obj
        except Exception:  # noqa: BLE001 - an in-memory stream, a file in a bad state: nothing to save, keep exiting
            continue
    for obj in _outer_first(files):
        try:
            if obj.closed:  # closed by the file over it
                continue
            if type(obj).__module__ == "_io":
                obj.flush()  # a text file flushes its buffered writer too
            else:
                obj.close()
        except Exception:  # noqa: BLE001 - a file in a bad state: nothing to save, keep exiting
            continue


def _outer_first(files: dict[int, io.IOBase]) -> list[io.IOBase]:
    """`files` ordered so that a file comes before the files it writes into (those it refers to, directly or through
    its attributes); a cycle's files come last, in any order."""
    inner: dict[int, set[int]] = {}
    for key, obj in files.items():
        refs = gc.get_referents(obj)
        refs += [value for ref in refs if type(ref) is dict for value in ref.values()]  # an instance's attributes
        inner[key] = {id(ref) for ref in refs if id(ref) in files and id(ref) != key}
    outer_count = {key: 0 for key in files}
    for keys in inner.values():
        for key in keys:
            outer_count[key] += 1
    ready = [key for key, count in outer_count.items() if count == 0]
    order: list[int] = []
    while ready:
        key = ready.pop()
        order.append(key)
        for under in inner[key]:
            outer_count[under] -= 1
            if outer_count[under] == 0:
                ready.append(under)
    placed = set(order)
    return [files[key] for key in order] + [obj for key, obj in files.items() if key not in placed]
