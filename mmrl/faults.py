"""Seeded fault injection for the crash tests: inert unless `MMRL_FAULT` is set.

`MMRL_FAULT="POINT@N[:ACTION]"` (comma-separated for several) fires the N-th time (default 1) this process reaches
the named point: ACTION `kill` (default) sends SIGKILL to the process itself, `interrupt` sends it SIGINT (Ctrl-C),
`enospc` raises "No space left on device", `bug` raises a RuntimeError (an error of mmrl's own), `hang` sleeps for
good (a stuck process). Points: `log.partial` (half of a metrics row written), `save.staged` (model written into the
staging directory, no completion marker yet), `update` (inside an optimizer step, before the parameters change),
`resumed` (right after the resume is announced), `rollout.worker` (the asynchronous rollout worker, a batch ready
and not yet sent). The tests use it to kill a run at reproducible moments; a user never sets it.

>>> fault_point("save.staged")  # MMRL_FAULT unset: nothing happens
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections import Counter

ENV = "MMRL_FAULT"
_reached: Counter[str] = Counter()


def fault_point(name: str) -> None:
    """Count one arrival at `name`; fire the fault configured for this arrival, if any."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    _reached[name] += 1
    for item in spec.split(","):
        point, _, action = item.strip().partition(":")
        point_name, _, nth = point.partition("@")
        if point_name != name or _reached[name] != int(nth or 1):
            continue
        if action in ("", "kill"):
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "interrupt":
            os.kill(os.getpid(), signal.SIGINT)
        elif action == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        elif action == "bug":
            raise RuntimeError(f"injected fault at {name}")
        elif action == "hang":
            while True:
                time.sleep(60)
