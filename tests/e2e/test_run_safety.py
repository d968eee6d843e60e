"""Faults a real run must survive: kill -9 at seeded points, a second run on a locked directory, SIGTERM, damaged
checkpoints, a full disk. Every run is the real `mmrl train` process on the tiny model with a reward that has spread.

Kill points come from `MMRL_FAULT` (see `mmrl/faults.py`): the process SIGKILLs itself the N-th time it
reaches a named point, so every crash is reproducible.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmrl.checkpoints.store import checkpoint_problem, find_latest, list_checkpoints, resolve_resume
from mmrl.runs.directory import LOCK_FILE, claim_run_dir, release_run_dir
from mmrl.runs.logger import read_metrics

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))
from test_bad_inputs import CONFIG, mmrl_subprocess, run_args  # noqa: E402

STEPS = 6


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from data_pipelines.synthetic import build_synthetic

    return build_synthetic(["color"], 12, 0, tmp_path_factory.mktemp("data"), image_size=56)


def train(data: Path, out: Path, *extra: str, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {"MMRL_FAULT": fault} if fault else {"MMRL_FAULT": ""}
    return mmrl_subprocess("train", str(CONFIG), *run_args(data, out), f"trainer.max_steps={STEPS}",
                           "trainer.save_steps=1", "trainer.keep_last=2", *extra, env=env)


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    result = train(data, out)
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(find_latest(run_dir) / "model.safetensors"))


def assert_same_run(run_dir: Path, straight: Path) -> None:
    rows, reference = read_metrics(run_dir), read_metrics(straight)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for row, ref in zip(rows, reference, strict=True):  # each row is the step the straight run logged
        assert (row["loss"], row["reward/total"]) == (ref["loss"], ref["reward/total"]), row["step"]
    final, expected = weights(run_dir), weights(straight)
    assert find_latest(run_dir).name == f"step-{STEPS}"
    assert sorted(final) == sorted(expected)
    assert all(torch.equal(final[k], expected[k]) for k in expected)


def test_kill_9_at_seeded_points_then_resume_auto_equals_a_straight_run(data, straight, tmp_path):
    out = tmp_path / "run"
    # Each attempt resumes the previous one (trainer.resume=auto) and dies at its own point:
    # mid-step (3rd optimizer step), right after the resume is announced, with half a metrics row written,
    # in the middle of a checkpoint save, and once more mid-row right after a resume; the last one finishes.
    attempts = ["update@3", "resumed@1", "log.partial@2", "save.staged@2", "log.partial@1", None]
    stderr = []
    for fault in attempts:
        result = train(data, out, "trainer.resume=auto", fault=fault)
        stderr.append(result.stderr)
        assert result.returncode == (0 if fault is None else -signal.SIGKILL), (fault, result.stderr[-2000:])
        assert not (out / "metrics.jsonl.tmp").exists()
    assert "trainer.resume=auto: no checkpoint in" in stderr[0] and "starting fresh" in stderr[0]
    assert "resumed from" in stderr[1]
    assert_same_run(out, straight)
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]  # dead staging cleared
    assert not (out / LOCK_FILE).exists()


def _wait_for(predicate, what: str, proc: subprocess.Popen, limit_s: float = 240) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_a_locked_run_dir_refuses_a_second_run_and_sigterm_says_where_to_resume(data, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "MMRL_FAULT": ""}
    first = subprocess.Popen([sys.executable, "-m", "mmrl", "train", str(CONFIG), *run_args(data, out),
                              "trainer.max_steps=1000", "trainer.save_steps=1"],
                             cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        _wait_for(lambda: (out / LOCK_FILE).is_file() and (out / LOCK_FILE).read_text().strip(), "the lock", first)
        assert (out / LOCK_FILE).read_text().strip() == str(first.pid)
        second = mmrl_subprocess("train", str(CONFIG), *run_args(data, out), "trainer.resume=auto")
        assert second.returncode == 2, second.stderr[-2000:]
        line = [x for x in second.stderr.splitlines() if x.strip()]
        assert len(line) == 1 and f"is in use by another mmrl run (pid {first.pid})" in line[0], second.stderr
        _wait_for(lambda: len(list_checkpoints(out)) >= 1, "a checkpoint", first)
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=240)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 143, err[-2000:]
    assert "Traceback" not in err
    last = [x for x in err.splitlines() if x.strip()][-1]
    latest = find_latest(out)
    assert last == f"mmrl train: terminated (SIGTERM); continue from {latest} with trainer.resume=auto", last
    assert not (out / LOCK_FILE).exists()
    # The run it names continues and its metrics stay one row per step.
    resumed = train(data, out, "trainer.resume=auto", "trainer.max_steps=" + str(int(latest.name.split("-")[1]) + 1))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    steps = [r["step"] for r in read_metrics(out)]
    assert steps == list(range(1, len(steps) + 1))


def test_ctrl_c_says_which_checkpoint_to_resume_from(data, tmp_path):
    out = tmp_path / "run"
    result = train(data, out, fault="update@3:interrupt")  # a real SIGINT, in the 3rd step
    assert result.returncode == 130, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = [x for x in result.stderr.splitlines() if x.strip()][-1]
    assert last == f"mmrl train: interrupted; continue from {out / 'checkpoints' / 'step-2'} with trainer.resume=auto"
    assert not (out / LOCK_FILE).exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_line(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_FILE).write_text(f"{dead.pid}\n")
    claim_run_dir(out, None, False)
    try:
        assert f"taking over the stale lock of pid {dead.pid} (no longer running)" in capsys.readouterr().err
        assert (out / LOCK_FILE).read_text().strip() == str(os.getpid())
    finally:
        release_run_dir(out)
    assert not (out / LOCK_FILE).exists()


def test_damaged_checkpoints_are_named_and_resume_auto_falls_back(data, straight, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    step5, step6 = out / "checkpoints" / "step-5", out / "checkpoints" / "step-6"
    (step6 / "model.safetensors").write_bytes(b"garbage" * 100)
    assert "step-6/model.safetensors is damaged" in checkpoint_problem(step6)
    assert resolve_resume("auto", out) == step5
    err = capsys.readouterr().err
    assert f"skipping damaged checkpoint {step6}" in err and "model.safetensors is damaged" in err
    assert f"falling back to the previous complete checkpoint {step5}" in err
    (step5 / "trainer_state.pt").unlink()
    assert resolve_resume("auto", out) is None
    assert "step-5/trainer_state.pt is missing" in capsys.readouterr().err
    # Through the CLI: a truncated trainer state is skipped; the run resumes from step-5 and finishes like a
    # straight run.
    shutil.rmtree(out)
    shutil.copytree(straight, out)
    state = step6 / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:1000])
    result = train(data, out, "trainer.resume=auto")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"{state} is damaged" in result.stderr
    assert f"falling back to the previous complete checkpoint {step5}" in result.stderr
    assert_same_run(out, straight)


def test_disk_full_during_a_save_is_one_line_and_keeps_the_previous_checkpoint(data, tmp_path):
    out = tmp_path / "run"
    result = train(data, out, fault="save.staged@2:enospc")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = [x for x in result.stderr.splitlines() if x.strip()][-1]
    step1 = out / "checkpoints" / "step-1"
    assert last.startswith("mmrl train: error: could not save checkpoint step-2"), last
    assert f"the disk is full; the previous checkpoint {step1} is intact" in last
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-1"]  # no staging left taking space
    assert checkpoint_problem(step1) is None
    assert [r["step"] for r in read_metrics(out)] == [1, 2]
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 2
    assert not (out / LOCK_FILE).exists()
