"""How many intra-op threads torch may use in this process, chosen once per process and said in the run's first lines.

torch's default (one thread per core of the machine) thrashes on a shared or small machine: its OpenMP threads spin
waiting for each other while another job holds a core, and a GRPO step of the quickstart took 13-33 s instead of
2-3 s on 2 busy cores. As `torchrun` does for each rank, mmrl divides the CPUs this process may run on
(`os.sched_getaffinity`, which honours taskset, cgroups' cpusets and slurm's binding) among the processes launched
on this node (`LOCAL_WORLD_SIZE`), and leaves out the cores other jobs already keep busy (the 1-minute load
average, read before this run adds its own). The reward worker processes score while the trainer waits for them, so
they share the same cores without running at the same time as torch's threads (`reward_workers`).

`OMP_NUM_THREADS` (the variable every launcher and cluster knows) or `trainer.num_threads` overrides the choice; the
config field wins when both are given, since it is recorded with the run.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass

# The count chosen for this process: the first call decides (a pipeline's later steps must not re-read a load
# average that now includes this process's own threads); said once.
_CHOSEN: list[ThreadChoice] = []
_SAID: list[bool] = []


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    reason: str
    warning: str | None = None


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity call on this platform
        return max(1, os.cpu_count() or 1)


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _positive_int(text: str | None) -> int | None:
    try:
        value = int(str(text).strip())
    except (TypeError, ValueError):
        return None
    return value if value >= 1 else None


def local_processes(env: Mapping[str, str]) -> int:
    """Processes launched on this node (torchrun and accelerate set LOCAL_WORLD_SIZE; a plain process is one)."""
    return _positive_int(env.get("LOCAL_WORLD_SIZE")) or 1


def choose_threads(setting: int | None = None, *, cpus: int | None = None, load: float | None = None,
                   env: Mapping[str, str] | None = None) -> ThreadChoice:
    """The thread count for one process and why (pure: the arguments stand in for the machine in tests)."""
    env = os.environ if env is None else env
    cpus = available_cpus() if cpus is None else cpus
    per_process = max(1, cpus // local_processes(env))
    where = (f"{cpus} CPUs available to this process" +
             (f", {local_processes(env)} processes on this node" if local_processes(env) > 1 else ""))
    from_env = _positive_int(env.get("OMP_NUM_THREADS"))
    if setting is not None:
        threads, reason = setting, f"trainer.num_threads={setting}; {where}"
    elif from_env is not None:
        threads, reason = from_env, f"OMP_NUM_THREADS={from_env}; {where}"
    elif load is None:
        threads, reason = per_process, f"{where}; set trainer.num_threads or OMP_NUM_THREADS to change it"
    else:
        # Cores other jobs keep busy are left to them. Rounded: a job that has just started shows a load under 1
        # for a minute, and a load of 0.3 is background noise.
        threads = min(per_process, max(1, (cpus - round(load)) // local_processes(env)))
        reason = f"{where}, load average {load:.1f}; set trainer.num_threads or OMP_NUM_THREADS to change it"
    warnings = []
    asked = (f"trainer.num_threads={setting}" if setting is not None
             else f"OMP_NUM_THREADS={from_env}" if from_env is not None else None)
    if asked and threads > per_process:
        # kept as asked (it is recorded with the run), but said: more threads than cores spin and wait for each other
        warnings.append(f"{asked} is more than this process's share of the CPUs ({where}: "
                        f"{per_process}); the extra threads wait for each other and steps get slower, not faster")
    if load is not None and load >= cpus:
        warnings.append(f"the machine is oversubscribed: load average {load:.1f} on the {cpus} CPUs this process may "
                        f"use; mmrl runs {threads} torch thread(s) per process, and steps will be slower than on a "
                        "quiet machine")
    return ThreadChoice(threads, reason, "; ".join(warnings) or None)


def configure_threads(setting: int | None = None) -> ThreadChoice:
    """Choose (once per process) and apply to torch, before its first parallel op; later calls return the choice."""
    if _CHOSEN:
        return _CHOSEN[0]
    import torch

    choice = choose_threads(setting, load=_load_average())
    torch.set_num_threads(choice.threads)
    _CHOSEN.append(choice)
    return choice


def announce_threads(say: Callable[[str], None] | None = None) -> None:
    """Say the choice once, on the main process, when the run's setup went through: a mistake found while it loads
    (a mistyped model name) stays a one-line error."""
    if _SAID or not _CHOSEN or os.environ.get("RANK", "0") != "0":  # one line per run, not one per process
        return
    _SAID.append(True)
    choice = _CHOSEN[0]
    tell = say or (lambda line: print(line, file=sys.stderr, flush=True))
    tell(f"threads: {choice.threads} torch thread(s) per process ({choice.reason})")
    if choice.warning:
        tell(f"warning: {choice.warning}")


def reward_workers(env: Mapping[str, str] | None = None) -> int:
    """Reward worker processes per trainer process: at most 4, and no more than its share of the CPUs."""
    env = os.environ if env is None else env
    return max(1, min(4, available_cpus() // local_processes(env)))
