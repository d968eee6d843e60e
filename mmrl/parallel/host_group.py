"""The CPU (gloo) process group the processes wait for the main one in (see `mmrl.parallel.distributed`'s module doc).

The main process alone evaluates and writes checkpoints while the others wait. A wait inside an NCCL collective is
killed by NCCL's watchdog after the default group's timeout (10 minutes by default); a gloo group with
`MAIN_ALONE_TIMEOUT` waits on the host instead, and object gathers (pickled on the host anyway) keep their buffers in
host memory, not on GPU 0.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch.distributed as dist

# How long the other processes wait for the main process alone (an evaluation, a checkpoint of a large model).
MAIN_ALONE_TIMEOUT = timedelta(hours=4)
_HOST_GROUP: list[Any] = []  # the gloo group of this process's default group, once made


def host_group() -> Any:
    """The CPU (gloo) process group with `MAIN_ALONE_TIMEOUT`, made once per process group (every process must
    call this at the same point the first time); None without a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    if not _HOST_GROUP or _HOST_GROUP[0][0] is not dist.group.WORLD:
        _HOST_GROUP[:] = [(dist.group.WORLD, dist.new_group(backend="gloo", timeout=MAIN_ALONE_TIMEOUT))]
    return _HOST_GROUP[0][1]
