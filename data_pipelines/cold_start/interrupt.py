"""Ctrl-C and SIGTERM during a build that pays per request: the first signal stops spending, the second stops now.

Before, an interrupted `mmrl build-data cold-start` ran the remaining stages of every item in progress (dozens of
paid generations with a 32-request concurrency), printed nothing meanwhile, and a second Ctrl-C lost the replies
that had arrived. Now:

- first signal: no new request starts (`Interrupts.stopping`, checked before each request); one line on stderr says
  how many requests are in flight, per stage, and that their replies will be cached; the build waits for them, then
  ends as interrupted (exit 130, 143 for SIGTERM) without writing outputs (the next run resumes from the cache);
- second signal: the build ends at once; every reply that arrived before it is already in the cache (a stage's
  reply is written when it arrives), the requests still in flight are abandoned (their worker threads are daemons:
  the process does not wait for them).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from mmrl.errors import Terminated

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class InFlight:
    """Requests in flight per stage (for the first signal's message)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}

    def add(self, stage: str, delta: int) -> None:
        with self._lock:
            self.counts[stage] = self.counts.get(stage, 0) + delta

    def describe(self) -> str:
        with self._lock:
            busy = {stage: n for stage, n in self.counts.items() if n}
        total = sum(busy.values())
        if not total:
            return "no request is in flight"
        per_stage = ", ".join(f"{stage}: {n}" for stage, n in busy.items())
        return f"waiting for the {total} request{'s' if total > 1 else ''} in flight ({per_stage}); their replies " \
               "will be cached"


class Interrupts:
    """SIGINT / SIGTERM handlers for the generation loop (installed only in the main thread)."""

    def __init__(self, where: str, in_flight: InFlight) -> None:
        self.where, self.in_flight = where, in_flight
        self.stopping = threading.Event()
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            for signum in _SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, _frame: object) -> None:
        if self.stopping.is_set():  # the second signal: stop now
            self.interrupt(signum)
        self.signum = signum
        self.stopping.set()
        again = "press Ctrl-C" if signum == signal.SIGINT else "send SIGTERM"
        how = "interrupted" if signum == signal.SIGINT else "terminated (SIGTERM)"
        print(f"{self.where}: {how}: no new request starts; {self.in_flight.describe()}; {again} again to stop now",
              file=sys.stderr, flush=True)

    def interrupt(self, signum: int | None = None) -> None:
        """Raise what the command line reports as this signal (KeyboardInterrupt, or its SIGTERM subclass)."""
        raise Terminated() if (signum or self.signum) == signal.SIGTERM else KeyboardInterrupt()


def run_items(items: Sequence[Any], work: Callable[[Any], Any], workers: int, stopping: threading.Event,
              on_done: Callable[[int, Any], None]) -> None:
    """`work(item)` for each item on `workers` daemon threads, taking no new item once `stopping` is set; calls
    `on_done(index, result)` in this thread. An exception from `work` stops taking new items, waits for the ones
    running, then propagates. A signal handler that raises (the second Ctrl-C) ends the wait at once."""
    lock = threading.Condition()
    queue = list(enumerate(items))[::-1]
    finished: list[tuple[int, Any]] = []
    error: list[BaseException] = []
    alive = max(1, workers)

    def worker() -> None:
        nonlocal alive
        while True:
            with lock:
                if stopping.is_set() or error or not queue:
                    alive -= 1
                    lock.notify_all()
                    return
                index, item = queue.pop()
            try:
                result, failure = work(item), None
            except BaseException as err:  # noqa: BLE001 - handed to the main thread
                result, failure = None, err
            with lock:
                if failure is not None:
                    error.append(failure)
                else:
                    finished.append((index, result))
                lock.notify_all()

    for i in range(alive):
        threading.Thread(target=worker, daemon=True, name=f"build-{i}").start()
    reported = 0
    while True:
        with lock:  # a timed wait: a signal handler runs (and may raise) while the main thread waits here
            lock.wait_for(lambda seen=reported: len(finished) > seen or alive == 0, timeout=1.0)
            batch, reported, over = finished[reported:], len(finished), alive == 0
        for index, result in batch:
            on_done(index, result)
        if over:
            break
    if error:
        raise error[0]
