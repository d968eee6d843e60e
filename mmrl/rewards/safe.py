"""Run reward code under a wall-clock limit, anywhere: main thread, worker threads, or killable worker processes.

math-verify's own timeout uses SIGALRM, which only works in the main thread (its issues #50/#55), so mmrl passes
`None` to it and enforces its own limits here:

- `call_with_timeout(fn, timeout_s)` — in-process. In the main thread an interval timer raises `RewardTimeout`
  (a BaseException, so library `except Exception` blocks cannot swallow it); elsewhere the call runs in a daemon thread
  that is abandoned (not killed) at the deadline. Use it for cheap rewards; it cannot stop a call stuck in C code.
- `WorkerPool` — N worker processes fed chunks of items over pipes. Each worker applies the timer per item; the parent
  also watches the clock and kills a worker that overruns (e.g. stuck in C), marks that item as timed out, respawns
  the worker and re-queues the rest of its chunk. Results stream back per item, so one hung item costs only itself.
  The pool works from any thread of the parent (it uses no signals there) and never leaks processes (`close()`,
  context manager, daemon workers).

Timeouts (`score_item`): to tell whose fault a timeout is, the reward also scores an EMPTY completion for the same item
under its own limit (the "probe"). Built-in rewards run the probe first, before the completion (it is cheap: the gold's
parse is cached per process), so a slow gold never eats the completion's time; user rewards, whose cost mmrl cannot
know, run it only after a timeout, so they are not called twice per item. Then:
- the probe gives a number -> the item is scorable, so a timeout on the completion is the completion's: 0.0, counted
  as `<name>/timeouts` (a policy must not learn that a verifier-breaking answer escapes the penalty);
- the probe gives None -> the item is unscorable whatever the completion (a bad gold): None, counted as unscorable;
- the probe itself runs out of time -> the gold is too slow to read: None, counted as unscorable;
- the probe raises -> nothing is known: a timeout then stays None (counted as a timeout).

Start method: `forkserver` with `mmrl.rewards` (and math-verify/sympy) preloaded: workers and respawns are forks of a
small clean server process, so start-up is cheap and a parent that has torch/CUDA threads loaded is never forked.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any

KILLED = "worker killed after the time limit (stuck where no timer reaches)"


class RewardTimeout(BaseException):
    """Raised inside a reward call that ran past its limit (BaseException so `except Exception` cannot eat it)."""


@dataclass
class Outcome:
    """The result of one guarded call: status is ok | timeout | error."""

    status: str
    value: Any = None
    message: str = ""


def _raise_timeout(signum, frame):
    raise RewardTimeout()


def call_with_timeout(fn, timeout_s: float | None, *args, **kwargs) -> Outcome:
    """Call `fn(*args, **kwargs)` with a wall-clock limit; never raises (see the module docstring)."""
    if not timeout_s:
        return _guarded(fn, args, kwargs)
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        previous = signal.signal(signal.SIGALRM, _raise_timeout)
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            return _guarded(fn, args, kwargs)
        except RewardTimeout:  # raised between the call's end and disarming
            return Outcome("timeout", message=f"over {timeout_s}s")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    box: list[Outcome] = []
    thread = threading.Thread(target=lambda: box.append(_guarded(fn, args, kwargs)), daemon=True)
    thread.start()
    thread.join(timeout_s)
    return box[0] if box else Outcome("timeout", message=f"over {timeout_s}s (call abandoned in a daemon thread)")


def _guarded(fn, args, kwargs) -> Outcome:
    try:
        return Outcome("ok", fn(*args, **kwargs))
    except RewardTimeout:
        return Outcome("timeout", message="over the time limit")
    except Exception as err:
        return Outcome("error", message=f"{type(err).__name__}: {err}")


# ---------------------------------------------------------------- worker processes
def _resolve(target: tuple[str, str]):
    """A reward from a picklable target: ("name", registered name) | ("file", spec) | ("module", "mod:name")."""
    from mmrl.rewards.registry import get_reward, load_file_reward

    kind, value = target
    if kind == "module":
        import importlib

        module_name, _, name = value.partition(":")
        importlib.import_module(module_name)
        return get_reward(name)
    return load_file_reward(value) if kind == "file" else get_reward(value)


def _score_one(fn, completion, row, kwargs):
    values = fn([completion], **{k: [v] for k, v in row.items()}, **kwargs)
    if not isinstance(values, (list, tuple)) or len(values) != 1:
        raise ValueError(f"reward returned {values!r:.80} for one completion; expected a list of one value")
    return values[0]


def _number(value: Any) -> bool:
    try:
        return value is not None and not isinstance(value, str) and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def probe_outcome(probe: Outcome) -> Outcome | None:
    """What the empty-completion probe says about an item: an Outcome to report as is (unscorable), or None when the
    completion should be scored."""
    if probe.status == "timeout":
        return Outcome("gold_timeout", None, "the item (its gold) took longer than the limit to read on its own")
    if probe.status == "ok" and not _number(probe.value):
        return Outcome("ok", None, "the reward cannot score this item whatever the completion (e.g. a bad gold)")
    return None


def timeout_outcome(probe: Outcome, message: str) -> Outcome:
    """A completion ran out of time: 0.0 when the probe showed the item is scorable, else None."""
    if probe.status == "ok" and _number(probe.value):
        return Outcome("timeout", 0.0, f"{message}; the item is scorable, so the completion scores 0")
    return Outcome("timeout", None, f"{message}; the reward could not show the item is scorable, so None")


def score_item(fn, completion: str, row: dict, kwargs: dict, timeout_s: float | None) -> Outcome:
    """Score one completion with the probe rule of the module docstring; never raises."""
    eager = getattr(fn, "mmrl_reward_name", None) is not None  # a built-in (registered) reward: probe first
    probe = call_with_timeout(_score_one, timeout_s, fn, "", row, kwargs) if eager else None
    settled = probe_outcome(probe) if probe is not None else None
    if settled is not None:
        return settled
    out = call_with_timeout(_score_one, timeout_s, fn, completion, row, kwargs)
    if out.status != "timeout":
        return out
    if probe is None:
        probe = call_with_timeout(_score_one, timeout_s, fn, "", row, kwargs)
        settled = probe_outcome(probe)
        if settled is not None:
            return settled
    return timeout_outcome(probe, out.message or "over the time limit")


def _worker_main(conn) -> None:
    """Worker loop: receive (job, target, kwargs, timeout, items, mode); send (job, idx, status, value, message) per item.

    mode "score" scores each item with `score_item`; mode "probe" only runs the empty-completion probe (used by the
    parent for items whose worker had to be killed, to learn whether the item was scorable); mode "batch" calls the
    reward once on an item that is a whole batch, (completions, columns), and sends back what it returned."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    cache: dict = {}
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        job, target, kwargs, timeout_s, items, mode = message
        for idx, completion, row in items:
            try:
                fn = cache.get(target) or cache.setdefault(target, _resolve(target))
                if mode == "batch":  # the item is the whole batch: (completions, columns) under one limit
                    out = call_with_timeout(fn, timeout_s, list(completion), **row, **kwargs)
                elif mode == "probe":
                    out = call_with_timeout(_score_one, timeout_s, fn, "", row, kwargs)
                else:
                    out = score_item(fn, completion, row, kwargs, timeout_s)
            except Exception as err:  # resolving the reward failed
                out = Outcome("error", message=f"{type(err).__name__}: {err}")
            try:  # plain pickle: a tensor value through torch's shared-memory pickling would die with this worker
                conn.send_bytes(pickle.dumps((job, idx, out.status, out.value, out.message)))
            except Exception:  # unpicklable value
                conn.send_bytes(pickle.dumps((job, idx, "error", None, "reward returned a value that cannot be sent: " + traceback.format_exc(limit=1))))  # fmt: skip


_PRELOAD = ["mmrl.rewards", "math_verify", "sympy"]


def _context(start_method: str | None):
    method = start_method or os.environ.get("MMRL_REWARD_START_METHOD", "forkserver")
    if method not in mp.get_all_start_methods():
        method = "spawn"
    ctx = mp.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(_PRELOAD)
    return ctx


@contextlib.contextmanager
def _user_main_hidden():
    """Start workers without re-importing the user's `__main__`.

    spawn/forkserver children re-run the parent's main script unless it is guarded by `if __name__ == "__main__"`;
    a training script without that guard would start training again inside every reward worker. Workers only need
    mmrl's own modules (user rewards are loaded by file path), so the main module is hidden while a worker starts.
    """
    main = sys.modules.get("__main__")
    saved = {name: getattr(main, name) for name in ("__spec__", "__file__") if hasattr(main, name)}
    try:
        if main is not None:
            main.__spec__ = None
            if hasattr(main, "__file__"):
                del main.__file__
        yield
    finally:
        for name, value in saved.items():
            setattr(main, name, value)


@dataclass
class _Worker:
    process: Any
    conn: Any
    job: Any = None
    queue: deque = field(default_factory=deque)  # items of the current chunk not yet answered
    deadline: float = 0.0


class WorkerPool:
    """Killable reward worker processes (see the module docstring). Thread-safe: one `run` at a time."""

    def __init__(self, workers: int, start_method: str | None = None, grace_s: float = 1.0):
        self.size = max(1, workers)
        self.grace_s = grace_s
        self._ctx = _context(start_method)
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._mode = "score"
        self.respawns = 0

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(target=_worker_main, args=(child,), daemon=True, name="mmrl-reward-worker")
        with _user_main_hidden():
            process.start()
        child.close()
        return _Worker(process, parent)

    def _kill(self, worker: _Worker) -> None:
        worker.process.kill()
        worker.process.join(5)
        worker.conn.close()

    def run(self, jobs: list[tuple[Any, tuple[str, str], dict, float, list]], chunk_size: int = 16,
            mode: str = "score") -> dict:  # fmt: skip
        """Score `jobs` = [(job_key, target, kwargs, timeout_s, [(idx, completion, row), ...])] (`mode="probe"`: run
        only the empty-completion probe of each item).

        Returns {(job_key, idx): Outcome}. Every item gets an outcome, whatever the reward does; an item whose worker
        had to be killed gets status "timeout" and the message `KILLED`. `mode="batch"`: each item is a whole batch,
        (idx, completions, columns), scored by one call under the job's limit.
        """
        self._mode = mode
        with self._lock:
            while len(self._workers) < self.size:
                self._workers.append(self._spawn())
            chunks: deque = deque()
            for key, target, kwargs, timeout_s, items in jobs:
                for start in range(0, len(items), chunk_size):
                    chunks.append((key, target, kwargs, timeout_s, items[start : start + chunk_size]))
            results: dict = {}
            while chunks or any(w.job for w in self._workers):
                for i, worker in enumerate(self._workers):
                    if worker.job is None and chunks:
                        if not worker.process.is_alive():
                            self._workers[i] = worker = self._respawn(worker)
                        self._assign(worker, chunks.popleft())
                busy = [w for w in self._workers if w.job is not None]
                now = time.monotonic()
                ready = wait([w.conn for w in busy], timeout=max(0.0, min(w.deadline for w in busy) - now))
                for worker in busy:
                    if worker.conn in ready:
                        self._receive(worker, results, chunks)
                for i, worker in enumerate(self._workers):
                    if worker.job is not None and time.monotonic() > worker.deadline:
                        self._fail_current(worker, results, chunks, "timeout", KILLED)
                        self._workers[i] = self._respawn(worker)
            return results

    def _item_limit(self, timeout_s: float) -> float:
        """Seconds one item may take in a worker: the probe and the scoring each have the limit (score mode); a
        batch's limit is its own."""
        return timeout_s * (2 if self._mode == "score" else 1) + self.grace_s

    def _assign(self, worker: _Worker, chunk) -> None:
        key, target, kwargs, timeout_s, items = chunk
        worker.job = (key, target, kwargs, timeout_s)
        worker.queue = deque(items)
        worker.deadline = time.monotonic() + self._item_limit(timeout_s)
        worker.conn.send((key, target, kwargs, timeout_s, items, self._mode))

    def _receive(self, worker: _Worker, results: dict, chunks: deque) -> None:
        try:
            key, idx, status, value, message = pickle.loads(worker.conn.recv_bytes())
        except (EOFError, OSError):
            self._fail_current(worker, results, chunks, "error", "reward worker process died")
            self._workers[self._workers.index(worker)] = self._respawn(worker)
            return
        results[(key, idx)] = Outcome(status, value, message)
        if worker.queue and worker.queue[0][0] == idx:
            worker.queue.popleft()
        worker.deadline = time.monotonic() + self._item_limit(worker.job[3])
        if not worker.queue:
            worker.job = None

    def _fail_current(self, worker: _Worker, results: dict, chunks: deque, status: str, message: str) -> None:
        key, target, kwargs, timeout_s = worker.job
        if worker.queue:
            idx = worker.queue.popleft()[0]
            results[(key, idx)] = Outcome(status, None, message)
        if worker.queue:
            chunks.appendleft((key, target, kwargs, timeout_s, list(worker.queue)))
        worker.job, worker.queue = None, deque()

    def _respawn(self, worker: _Worker) -> _Worker:
        self._kill(worker)
        self.respawns += 1
        return self._spawn()

    def close(self) -> None:
        """Stop all workers (idempotent)."""
        with self._lock:
            for worker in self._workers:
                try:
                    worker.conn.send(None)
                except (OSError, ValueError):
                    pass
            for worker in self._workers:
                worker.process.join(1)
                if worker.process.is_alive():
                    worker.process.kill()
                    worker.process.join(5)
                worker.conn.close()
            self._workers = []

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
