"""The torch thread count mmrl chooses per process (mmrl/runs/threads.py): from the CPUs the process may use, its
launch's processes on the node and the cores other jobs keep busy; OMP_NUM_THREADS and trainer.num_threads win."""

from __future__ import annotations

import os

import pytest

from mmrl.runs import threads
from mmrl.runs.threads import announce_threads, available_cpus, choose_threads, configure_threads, reward_workers


def test_a_quiet_machine_gets_every_available_cpu_divided_among_the_launched_processes():
    assert choose_threads(cpus=8, load=0.2, env={}).threads == 8
    assert choose_threads(cpus=8, load=0.2, env={"LOCAL_WORLD_SIZE": "4"}).threads == 2  # as torchrun per rank
    assert choose_threads(cpus=2, load=0.0, env={"LOCAL_WORLD_SIZE": "4"}).threads == 1  # never 0
    assert choose_threads(cpus=8, load=None, env={}).threads == 8  # no load average on this platform


def test_cores_other_jobs_keep_busy_are_left_to_them_and_a_full_machine_warns():
    # 2 cores and one other CPU-bound job (load 1.0): torch's default 2 threads thrashed there (13-33 s a step)
    busy = choose_threads(cpus=2, load=1.0, env={})
    assert busy.threads == 1 and busy.warning is None
    assert "load average 1.0" in busy.reason and "trainer.num_threads" in busy.reason
    full = choose_threads(cpus=2, load=3.5, env={})
    assert full.threads == 1 and "oversubscribed: load average 3.5 on the 2 CPUs" in full.warning


def test_omp_num_threads_and_the_config_field_override_the_choice():
    by_env = choose_threads(cpus=8, load=7.0, env={"OMP_NUM_THREADS": "3"})
    assert by_env.threads == 3 and by_env.reason.startswith("OMP_NUM_THREADS=3")
    assert "oversubscribed" not in (by_env.warning or "")
    by_field = choose_threads(4, cpus=8, load=0.0, env={"OMP_NUM_THREADS": "3"})
    assert by_field.threads == 4 and by_field.reason.startswith("trainer.num_threads=4")
    assert choose_threads(cpus=8, load=0.0, env={"OMP_NUM_THREADS": "zero"}).threads == 8  # unusable: ignored


def test_the_choice_is_applied_said_once_and_kept_for_the_process(monkeypatch):
    import torch

    monkeypatch.setattr(threads, "_CHOSEN", [])
    monkeypatch.setattr(threads, "_SAID", [])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    said: list[str] = []
    try:
        first = configure_threads(None)
        assert torch.get_num_threads() == first.threads == 1
        announce_threads(said.append)
        lines = list(said)
        assert configure_threads(2) is first  # a pipeline's later steps keep the first choice
        announce_threads(said.append)
        assert said == lines  # said once (a warning, on a busy machine, once too)
        assert lines[0] == (f"threads: 1 torch thread(s) per process (OMP_NUM_THREADS=1; {available_cpus()} CPUs "
                            "available to this process)")
        assert lines[1:] == ([f"warning: {first.warning}"] if first.warning else [])
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity on this platform")
def test_reward_workers_follow_the_cpus_of_this_process_not_the_machine(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert available_cpus() == 1 and reward_workers({}) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert reward_workers({}) == 4 and reward_workers({"LOCAL_WORLD_SIZE": "8"}) == 2


def test_more_threads_than_the_process_may_use_are_kept_but_said():
    over = choose_threads(3, cpus=2, load=0.0, env={})
    assert over.threads == 3  # the setting is recorded with the run: kept, not changed behind the user's back
    assert over.warning.startswith("trainer.num_threads=3 is more than this process's share of the CPUs")
    assert "(2 CPUs available to this process: 2)" in over.warning
    ranks = choose_threads(cpus=4, load=0.0, env={"OMP_NUM_THREADS": "4", "LOCAL_WORLD_SIZE": "2"})
    assert ranks.warning.startswith("OMP_NUM_THREADS=4 is more than") and "2 processes on this node: 2)" in ranks.warning
    assert choose_threads(2, cpus=2, load=0.0, env={}).warning is None  # its share exactly: nothing to say
    assert choose_threads(cpus=2, load=0.0, env={"LOCAL_WORLD_SIZE": "4"}).warning is None  # mmrl's own choice
