"""How a process of a multi-process launch ends: `exit_process` (which `mmrl`'s CLI ends through) lets non-daemon
threads finish, runs the atexit handlers (which leave the group), flushes, and exits with the process's own status,
without the interpreter's finalization (where a gloo worker thread releasing a late collective used to abort a
finished rank with SIGABRT). In a process that joined no group it returns the status unchanged."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import subprocess
import sys
import time

import pytest

from mmrl.parallel.distributed import exit_process
from tests.integration.launch import CONFIG, FIXTURES, ROOT, launcher, train_args


def test_each_rank_ends_with_its_own_status_after_its_threads_atexit_handlers_and_output(tmp_path, port_args):
    done = subprocess.run([*launcher("ddp", port_args), str(FIXTURES / "exit_paths.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert "terminate called" not in done.stderr and "SIGABRT" not in done.stderr, done.stderr[-2000:]
    # rank 1's status 3 is the launch's root cause: the launcher fails, naming it (and no signal)
    assert done.returncode != 0
    cause = done.stderr.rpartition("Root Cause")[2]
    assert "rank      : 1" in cause and "exitcode  : 3" in cause, cause
    assert float((tmp_path / "sum-0.txt").read_text()) == 3.0  # the late all-reduce completed on rank 0: 1 + 2
    for rank in (0, 1):
        assert (tmp_path / f"atexit-{rank}.txt").read_text() == "ran"
        assert (tmp_path / f"thread-{rank}.txt").read_text() == str(sum(range(3_000_000)))
        assert f"rank {rank} done" in done.stdout  # printed without a newline: flushed before the process ended


def test_a_process_that_joined_no_group_gets_its_status_back():
    assert exit_process(0) == 0 and exit_process(7) == 7
    # and the CLI in such a process returns instead of ending it
    done = subprocess.run([sys.executable, "-c", "from mmrl.cli import main; import sys; "
                           "code = main(['train', '/nonexistent.yaml']); print('returned', code)"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.stdout.strip().startswith("returned ") and done.stdout.strip() != "returned 0", done


def test_edges_another_thread_late_thread_collective_and_files_left_open(tmp_path, port_args):
    done = subprocess.run([*launcher("ddp", port_args), str(FIXTURES / "exit_edges.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    # CPython's thread shutdown run from a non-daemon thread waits for that thread itself: the rank used to hang here
    assert done.returncode == 0, done.stderr[-2000:]
    assert [(tmp_path / f"thread-{rank}.txt").read_text() for rank in (0, 1)] == ["5", "5"]
    # a non-daemon thread's last collective after the main thread ended: the group used to be gone by then
    assert [(tmp_path / f"late-{rank}.txt").read_text() for rank in (0, 1)] == ["3.0", "3.0"], done.stderr[-2000:]
    # os._exit skips the finalization that flushes a file when it is freed: its buffered writes used to be lost
    for rank in (0, 1):
        assert (tmp_path / f"open-{rank}.txt").read_text() == f"rank {rank} kept\n"
        assert (tmp_path / f"open-{rank}.bin").read_bytes() == b"kept"


def test_a_launch_with_stdout_closed_still_ends_each_rank_with_its_own_status(tmp_path, port_args):
    # `>&-` (a detached job): each rank's sys.stdout is None, which the final flush used to call .flush() on, so every
    # rank failed with an AttributeError (exit 1) after its work was done
    cmd = [*launcher("ddp", port_args), str(FIXTURES / "exit_paths.py"), str(tmp_path)]
    done = subprocess.run(["sh", "-c", 'exec "$@" 1>&-', "sh", *cmd], stderr=subprocess.PIPE, text=True, timeout=300,
                          cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert not [line for line in done.stderr.splitlines() if line.startswith("[rank") and "Error" in line], done.stderr
    cause = done.stderr.rpartition("Root Cause")[2]
    assert "rank      : 1" in cause and "exitcode  : 3" in cause, cause
    others = done.stderr.rpartition("Root Cause")[0].rpartition("Failures:")[2]
    assert "rank      : 0" not in others, others  # rank 0 ended with status 0
    for rank in (0, 1):
        assert (tmp_path / f"atexit-{rank}.txt").read_text() == "ran"


def test_an_error_of_mmrls_own_in_a_launched_train_is_its_traceback_and_status_1(tmp_path, port_args, tiny_model_dir):
    # an exception that is not a UserError left the CLI to the interpreter's finalization, where the late gloo thread
    # could turn the rank's exit 1 into a SIGABRT; now the CLI prints the traceback and ends through exit_process
    from data_pipelines.synthetic import build_synthetic

    data = build_synthetic(["color"], 4, 0, tmp_path / "data", image_size=56)
    # `-m mmrl` with a sentinel that shows finalization: the traceback and status 1 alone are also what a process
    # left to finalization shows (most of the time)
    cmd = [*launcher("ddp", port_args), str(FIXTURES / "cli_ending.py"), str(tmp_path), "launched", "train",
           str(CONFIG), *train_args(data), f"trainer.output_dir={tmp_path / 'run'}", "trainer.max_steps=3"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
                               "MMRL_FAULT": "update@2:bug"})
    assert done.stderr.count("RuntimeError: injected fault at update") == 2, done.stderr[-3000:]  # each rank's
    assert "Traceback (most recent call last)" in done.stderr and "terminate called" not in done.stderr
    cause = done.stderr.rpartition("Root Cause")[2]
    assert "exitcode  : 1 " in cause and "SIG" not in cause, cause
    assert not list(tmp_path.glob("finalized-*")), done.stderr[-3000:]  # both ranks ended through exit_process


@pytest.mark.parametrize("ending", ["exits_3", "exits_past_a_c_int", "exits_with_a_message", "raises_a_base_exception",
                                    "user_error"])
def test_a_command_ended_by_systemexit_or_a_base_exception_ends_a_joined_process_like_plain_python(tmp_path, ending):
    # SystemExit (a user reward's sys.exit) and BaseExceptions left `main` to the interpreter's finalization, where a
    # late gloo thread can abort the process: they end through exit_process, with the status and output Python gives
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"completion": "a", "answer": "a"}) + "\n")
    reward = f"{FIXTURES / 'ending_rewards.py'}:{ending}"
    args = ["reward", "score", "--workers", "0", "--reward", "accuracy" if ending == "user_error" else reward,
            "--input", str(tmp_path / "missing.jsonl" if ending == "user_error" else rows)]
    done = {}
    for how in ("alone", "join"):
        (tmp_path / how).mkdir()
        done[how] = subprocess.run([sys.executable, str(FIXTURES / "cli_ending.py"), str(tmp_path / how), how, *args],
                                   capture_output=True, text=True, timeout=300, cwd=ROOT,
                                   env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    alone, joined = done["alone"], done["join"]
    assert (tmp_path / "alone" / "finalized-0").exists()  # a plain exit finalizes: the sentinel shows it
    assert not (tmp_path / "join" / "finalized-0").exists(), joined.stderr[-2000:]
    expected = {"exits_3": 3, "exits_past_a_c_int": 3, "exits_with_a_message": 1, "raises_a_base_exception": 1, "user_error": 2}[ending]
    assert joined.returncode == alone.returncode == expected, (alone.stderr[-2000:], joined.stderr[-2000:])
    if ending == "exits_with_a_message":
        assert joined.stderr.strip().endswith("the reward gave up"), joined.stderr
    if ending == "raises_a_base_exception":
        assert "Traceback (most recent call last)" in joined.stderr and "Halt: halted by the reward" in joined.stderr
    if ending == "user_error":  # one line, no traceback
        assert joined.stderr.strip() == alone.stderr.strip() and joined.stderr.strip().count("\n") == 0, joined.stderr
        assert joined.stderr.startswith("mmrl reward: error: "), joined.stderr


@pytest.mark.parametrize("case", ["thread-hook-raises", "interrupted-join", "stdout-replaced", "reentrant"])
def test_exit_process_ends_with_its_status_whatever_its_steps_meet(tmp_path, case):
    # as Python's own exit does, a step that raises (a threading exit hook, Ctrl-C while waiting for a thread) is
    # reported and the exit goes on: it used to escape exit_process, leaving the process to finalization with another
    # status; a sys.stdout that writes into sys.__stdout__ lost that stream's buffer; an exit_process called by an
    # atexit handler ran the handlers again, recursively
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # buffered standard streams
    start = time.monotonic()
    done = subprocess.run([sys.executable, str(FIXTURES / "exit_alone.py"), str(tmp_path), case], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 4, done.stderr[-2000:]
    assert time.monotonic() - start < 50  # not the 60 s of the thread that was interrupted
    assert not (tmp_path / "finalized").exists(), done.stderr[-2000:]
    assert (tmp_path / "atexit").read_text() == "ran\n"
    assert done.stdout == "bye"


def test_exit_process_finishes_compressed_files_left_open(tmp_path):
    # finalization closes a file it frees, and a compressed file writes its end only then: flushed alone, a gzip, bz2
    # or xz log left open was unreadable ("Compressed file ended before the end-of-stream marker was reached")
    done = subprocess.run([sys.executable, str(FIXTURES / "exit_alone.py"), str(tmp_path), "compressed"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 4 and not (tmp_path / "finalized").exists(), done.stderr[-2000:]
    for name, read in [("log.gz", gzip.open), ("log.bz2", bz2.open), ("log.xz", lzma.open), ("inner.gz", gzip.open)]:
        with read(tmp_path / name) as f:
            assert f.read() == b"kept\n", name
