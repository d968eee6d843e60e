"""Asynchronous rollouts (`rollout.max_staleness`): a real worker process with its own copy of the tiny policy.

- the worker in lockstep (staleness 0) trains exactly what the synchronous loop trains (fp32, same weights);
- with staleness 1 the groups of step t come from version t - 1, every prompt is drawn once, in order;
- a resume drops the in-flight groups and regenerates them from the checkpoint, the same way every time;
- a worker that dies or hangs stops the run with one line, before anything of it is trained on;
- DDP (2 processes under `accelerate launch`): each rank its own worker; in lockstep the 2-process synchronous run's
  weights, bit for bit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from mmrl.config import load_config
from mmrl.errors import UserError
from mmrl.rl.trainer import GRPOLoop
from mmrl.runs.logger import read_metrics
from tests.integration.launch import FIXTURES, launcher, run, train_args

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "tests" / "grpo_tiny.yaml"
REWARD = ROOT / "tests" / "fixtures" / "trainer" / "varied_reward.py"


@pytest.fixture(autouse=True)
def one_thread():
    """The trainer here runs in the test process, whose torch thread count an earlier test of the same pytest-xdist
    worker may have left at 2; its worker process samples with `rollout.worker_threads=1`. Two thread counts give
    other float sums: the lockstep run then differed from the synchronous one in the last bits (a flaky failure)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory) -> Path:
    from data_pipelines.synthetic import build_synthetic

    return build_synthetic(["color"], 12, 0, tmp_path_factory.mktemp("synthetic"), image_size=56)


def _cfg(data: Path, out: Path, *extra: str):
    return load_config(CONFIG, [*_overrides(data, out), *extra])


def _overrides(data: Path, out: Path) -> list[str]:
    return [
        f"data.train={data}",
        f"trainer.output_dir={out}",
        "trainer.report_to=[jsonl]",
        "trainer.progress=false",
        "trainer.save_steps=0",
        "trainer.sample_steps=0",
        "trainer.save_final=false",
        "rollout.max_completion_length=4",
        "trainer.max_steps=3",
        "rollout.worker_threads=1",
        "trainer.num_threads=1",  # as the worker: two thread counts sum floats in other orders (not bit for bit)
        "optimizer.lr=1e-2",
        f"rewards=[{{name: '{REWARD}:reward'}}]",
    ]


def _processes_tagged(tag: str) -> list[int]:
    """Pids of live processes whose environment holds `tag`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and tag.encode() in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def _weights(trainer: GRPOLoop) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.run.model.state_dict().items()}


def _rows(out: Path) -> list[dict]:
    return [row for row in read_metrics(out) if "step" in row]


def test_worker_in_lockstep_trains_what_the_synchronous_loop_trains(synthetic_data, tmp_path):
    sync = GRPOLoop(_cfg(synthetic_data, tmp_path / "sync"))
    assert sync.max_staleness is None  # max_staleness 0 (the default) is the synchronous loop, no worker
    before = _weights(sync)
    sync.train()
    lockstep = GRPOLoop(_cfg(synthetic_data, tmp_path / "lockstep"))
    lockstep.max_staleness = 0  # the worker process, but waiting for each step's own weights
    lockstep.train()
    a, b = _weights(sync), _weights(lockstep)
    assert any(not torch.equal(a[k], before[k]) for k in a)  # training moved the weights
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)
    sync_rows, lock_rows = _rows(tmp_path / "sync"), _rows(tmp_path / "lockstep")
    assert [r["reward/total"] for r in lock_rows] == [r["reward/total"] for r in sync_rows]
    assert [r["async/staleness"] for r in lock_rows] == [0, 0, 0]


def test_staleness_one_samples_each_step_with_the_previous_version_and_resumes_the_same_way(synthetic_data, tmp_path):
    full = tmp_path / "full"
    GRPOLoop(
        _cfg(synthetic_data, full, "rollout.max_staleness=1", "trainer.max_steps=4", "trainer.save_steps=2")
    ).train()
    rows = _rows(full)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["async/sampled_version"] for r in rows] == [0, 0, 1, 2]  # step t (from 0) by version t - 1
    assert [r["async/staleness"] for r in rows] == [0, 1, 1, 1]
    assert [r["async/first_draw"] for r in rows] == [0, 2, 4, 6]  # 2 prompts a step: none twice, none skipped
    assert all(
        0 < r["rollout/is_ess"] <= 1 + 1e-9 and "rollout/chi2_token" in r for r in rows
    )  # the correction's figures
    assert rows[1]["rollout/logprob_kl"] > rows[0]["rollout/logprob_kl"]  # a stale step is off-policy

    # Resume from the step-2 checkpoint (the in-flight groups of steps 3 and 4 are gone): the same prompts are
    # regenerated by the checkpoint's weights, on-policy first.
    resumed = tmp_path / "resumed"
    GRPOLoop(
        _cfg(
            synthetic_data,
            resumed,
            "rollout.max_staleness=1",
            "trainer.max_steps=4",
            f"trainer.resume={full / 'checkpoints' / 'step-2'}",
        )
    ).train()
    rows_a = _rows(resumed)
    assert [r["step"] for r in rows_a] == [3, 4]
    assert [r["async/sampled_version"] for r in rows_a] == [2, 2]
    assert [r["async/first_draw"] for r in rows_a] == [4, 6]

    # A real kill (SIGKILL of the trainer inside step 3's optimizer step, worker ahead on step 4) and `resume=auto`:
    # the worker exits by itself, and the resumed run trains exactly what the resume from step 2 trained
    # (a resume is deterministic: same losses and rewards, step by step).
    killed = tmp_path / "killed"
    tag = f"async-kill-{uuid.uuid4().hex}"  # found in the environment of any process the killed run left behind
    args = [
        "train",
        str(CONFIG),
        *_overrides(synthetic_data, killed),
        "rollout.max_staleness=1",
        "trainer.max_steps=4",
        "trainer.save_steps=2",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "MMRL_ASYNC_TEST_TAG": tag}
    died = subprocess.run(
        [sys.executable, "-m", "mmrl", *args],
        env={**env, "MMRL_FAULT": "update@3"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert died.returncode == -signal.SIGKILL, died.stderr[-2000:]
    deadline = time.monotonic() + 60
    while _processes_tagged(tag) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _processes_tagged(tag), "the rollout worker outlived its killed trainer"
    done = subprocess.run(
        [sys.executable, "-m", "mmrl", *args, "trainer.resume=auto"],
        env={**env, "MMRL_FAULT": ""},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows_killed = _rows(killed)
    assert [r["step"] for r in rows_killed] == [1, 2, 3, 4]
    assert [r["async/first_draw"] for r in rows_killed] == [0, 2, 4, 6]
    assert [r["async/sampled_version"] for r in rows_killed] == [0, 0, 2, 2]
    for got, want in zip(rows_killed[2:], rows_a):
        assert {k: v for k, v in got.items() if k.startswith(("loss/", "reward/"))} == {
            k: v for k, v in want.items() if k.startswith(("loss/", "reward/"))
        }


@pytest.mark.parametrize(
    "fault, timeout, says",
    [
        ("rollout.worker@2:kill", 600, "the process died"),  # never waits the timeout: the pipe reports the death
        ("rollout.worker@2:hang", 3, "within rollout.worker_timeout_s=3"),  # the 1st batch has >= 600 s (a start)
    ],
)
def test_a_worker_that_dies_or_hangs_stops_the_run_in_one_line(
    synthetic_data, tmp_path, monkeypatch, fault, timeout, says
):
    monkeypatch.setenv("MMRL_FAULT", fault)  # the spawned worker inherits it; the trainer never reaches the point
    out = tmp_path / "run"
    trainer = GRPOLoop(_cfg(synthetic_data, out, "rollout.max_staleness=1", f"rollout.worker_timeout_s={timeout}"))
    with pytest.raises(UserError, match=says) as error:
        trainer.train()
    assert "\n" not in str(error.value)
    assert [r["step"] for r in _rows(out)] == [1]  # the second batch never arrived: nothing of it was trained on
    assert not trainer.worker.process.is_alive()


def test_ddp_each_rank_has_its_own_worker_and_lockstep_equals_the_synchronous_run(
    synthetic_data, tiny_model_dir, tmp_path, port_args
):
    """2 processes (accelerate launch, DDP on gloo), three runs in one launch: the synchronous loop; each rank's worker
    in lockstep, which must train to the same fp32 weights bit for bit (each worker draws its rank's share of the
    prompts with its rank's random state); and max_staleness 1, whose every rank samples step t with version t - 1
    and logs its staleness."""
    run(
        [
            *launcher("ddp", port_args),
            str(FIXTURES / "async_ranks.py"),
            str(CONFIG),
            str(tmp_path),
            *train_args(synthetic_data),
            "trainer.save_final=false",
            "rollout.worker_threads=1",
        ]
    )
    views = {
        name: [json.loads((tmp_path / name / f"rank-{r}.json").read_text()) for r in (0, 1)]
        for name in ("sync", "lockstep", "stale")
    }
    for name, ranks in views.items():
        assert [(v["rank"], v["world_size"]) for v in ranks] == [(0, 2), (1, 2)], name
        assert ranks[0]["pid"] != ranks[1]["pid"] and all(v["moved"] for v in ranks), name
    assert [v["worker_pid"] for v in views["sync"]] == [None, None]  # the synchronous loop starts no worker
    for name in ("lockstep", "stale"):  # one worker per rank: two processes, neither a trainer
        workers = {v["worker_pid"] for v in views[name]}
        assert len(workers) == 2 and None not in workers and not workers & {v["pid"] for v in views[name]}, name

    sync, lockstep = torch.load(tmp_path / "sync" / "final.pt"), torch.load(tmp_path / "lockstep" / "final.pt")
    for key in sync:
        torch.testing.assert_close(lockstep[key], sync[key], rtol=0, atol=0, msg=key)
    sync_rows, lock_rows = _rows(tmp_path / "sync" / "run"), _rows(tmp_path / "lockstep" / "run")
    assert [r["reward/total"] for r in lock_rows] == [r["reward/total"] for r in sync_rows]

    rows = _rows(tmp_path / "stale" / "run")
    assert (rows[0]["world_size"], rows[0]["engine"]) == (2, "ddp")
    assert [r["async/sampled_version"] for r in rows] == [0, 0, 1]
    assert [r["async/first_draw"] for r in rows] == [0, 2, 4]  # 2 prompts a step over both ranks: none twice
    for rank in (0, 1):
        assert [r[f"async/rank{rank}/staleness"] for r in rows] == [0, 1, 1]
        assert all(r[f"async/rank{rank}/worker_rollout_s"] > 0 for r in rows)


@pytest.mark.gpu  # skipped without CUDA; scripts/gpu_check.sh runs it (`pytest -m gpu`): the worker on the same GPU
def test_the_worker_samples_on_cuda_with_the_previous_version(synthetic_data, tmp_path):
    out = tmp_path / "cuda"
    cfg = _cfg(synthetic_data, out, "rollout.max_staleness=1", "trainer.device=cuda", "model.dtype=bf16")
    GRPOLoop(cfg).train()
    rows = _rows(out)
    assert [r["async/sampled_version"] for r in rows] == [0, 0, 1]
    assert [r["async/first_draw"] for r in rows] == [0, 2, 4]
