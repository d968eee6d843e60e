"""Test-wide settings: offline, quiet, a private model cache shared by the whole session (and its subprocesses)."""

from __future__ import annotations

import os
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
if "MMRL_CACHE" not in os.environ:
    os.environ["MMRL_CACHE"] = tempfile.mkdtemp(prefix="mmrl-test-cache-")
# A suite started in the background by a non-interactive shell (`nohup ... &`) inherits SIGINT ignored, and so would
# every process it starts (an ignored signal survives exec): the Ctrl-C tests would fail for the wrong reason. A
# Python handler does not survive exec, so children start with the default and install KeyboardInterrupt again.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import pytest  # noqa: E402
import torch  # noqa: E402

# Under pytest-xdist (`-n auto`: one worker per CPU) each worker gets one thread: two threads per worker on two cores
# thrash (the same oversubscription mmrl/runs/threads.py avoids for runs).
from mmrl.runs.threads import available_cpus  # noqa: E402  (the CPUs this process may use, as mmrl counts them)

_THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, available_cpus()))
torch.set_num_threads(_THREADS)
# mmrl chooses its thread count from the machine's load unless told (mmrl/runs/threads.py): the suite's runs, which
# compare results across processes (kill and resume, world sizes), all get the same count whatever the load. A worker
# sets it (xdist's controller runs this file first, 2 threads, and its workers inherit its environment); a plain run
# keeps a user's own OMP_NUM_THREADS.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
else:
    os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))


@pytest.fixture(scope="session")
def tiny_model_dir():
    """The `tiny` preset built once per test session."""
    from mmrl.models.tiny import ensure_tiny_model

    return ensure_tiny_model("tiny")


@pytest.fixture(scope="session")
def colour_checkpoint(tmp_path_factory):
    """A trained mmrl checkpoint (tiny, SFT-ed to name the colour of a square with its own system prompt and suffix;
    `tests.unit.demo_assets.train_colour_checkpoint`) for the tests of the demos' prompt template: 2 steps, since
    they read its run's template, not its answers (the answers are the quickstart checkpoint's tests)."""
    from tests.unit.demo_assets import train_colour_checkpoint

    return train_colour_checkpoint(tmp_path_factory.mktemp("colour-checkpoint"), steps=2)


@pytest.fixture(scope="session")
def quickstart_checkpoint(tmp_path_factory):
    """The quickstart's cold-start checkpoint (`configs/quickstart.yaml`'s data and sft steps, `small`;
    `tests.unit.demo_assets.train_quickstart_checkpoint`), trained once per session for the browser demos.

    `MMRL_DEMO_CHECKPOINT=runs/quickstart/grpo/checkpoints/step-200` serves the finished quickstart's own GRPO
    checkpoint instead (how docs/demo-*.png are made: the pipeline's minutes of GRPO do not fit in the suite)."""
    from tests.unit.demo_assets import train_quickstart_checkpoint

    given = os.environ.get("MMRL_DEMO_CHECKPOINT")
    if given:
        path = Path(given)  # as given: the demos show it in their title
        if not (path / "config.json").is_file() or not (path.parent.parent / "config.yaml").is_file():
            pytest.fail(f"MMRL_DEMO_CHECKPOINT={given}: not a run's checkpoint (want <run>/checkpoints/step-N, after "
                        "`mmrl pipeline configs/quickstart.yaml`: runs/quickstart/grpo/checkpoints/step-200)")
        return path
    return built_once_per_run(tmp_path_factory, "quickstart-checkpoint", train_quickstart_checkpoint)


def built_once_per_run(tmp_path_factory, name: str, build: Callable[[Path], Path]) -> Path:
    """`build(folder)` once per test run. A session fixture runs once per pytest-xdist worker, and a checkpoint
    trained in two workers costs its minute twice: the workers share their base temp folder's parent, so the first
    to ask builds there under a lock and the others wait for it and reuse what it built."""
    import fcntl
    import shutil

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder, marker = root / name, root / f"{name}.built"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if build() raised
        if marker.is_file():
            return Path(marker.read_text(encoding="utf-8"))
        shutil.rmtree(folder, ignore_errors=True)  # a half-built folder of a worker whose build failed
        folder.mkdir(parents=True)
        built = build(folder)
        marker.write_text(str(built), encoding="utf-8")
        return built


def _free_port_args() -> list[str]:
    """`accelerate launch` arguments for a free port: the preset's fixed port can still be held by the previous
    launch's store. Asked anew for each launch (a port is free only until someone binds it)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return ["--main_process_port", str(sock.getsockname()[1])]


@pytest.fixture(scope="session")
def port_args():
    """`port_args()` -> `["--main_process_port", "<free port>"]`, for each `accelerate launch` a test starts."""
    return _free_port_args


# The files that take longest (seconds of one worker, `--durations`, 2026-12-07), started first. pytest-xdist's
# `--dist loadfile` hands out whole files, by default the ones with the most tests first, so a long file of one or
# two tests (the README's commands: 100 s) started last and kept one worker busy after the other had finished.
# Longest first leaves only short files for the end. A stale list costs minutes of wall time, never a result.
LONGEST_FIRST = (
    "tests/e2e/test_recipes_offline.py",
    "tests/integration/test_distributed.py",
    "tests/integration/test_grpo_trainer.py",
    "tests/integration/test_real_families_pipeline.py",
    "tests/e2e/test_run_safety.py",
    "tests/e2e/test_readme_usage.py",
    "tests/integration/test_async_rollout.py",
    "tests/e2e/test_demos_browser.py",
    "tests/integration/test_deepspeed.py",
    "tests/integration/test_process_exit.py",
    "tests/integration/test_multiturn_learns.py",
    "tests/integration/test_gpu_tools.py",
    "tests/integration/test_policy_update.py",
    "tests/integration/test_real_families.py",
    "tests/e2e/test_bad_inputs.py",
)


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist: keep the order below
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    """The longest files first (see LONGEST_FIRST); `gpu`-marked tests run only where a CUDA device is visible
    (`scripts/gpu_check.sh` runs them)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: the rest keep their order
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (gpu marker)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
