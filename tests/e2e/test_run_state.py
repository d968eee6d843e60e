"""A new user's state on disk is never silently replaced: a run that stopped before its first step does not block
its corrected re-run, a resume with a changed config is refused naming the fields (unless they are named as
intended) and every segment's config is kept; a run whose output goes to a file says its thread count first and logs
its progress as plain lines. Real `mmrl train` processes on the tiny model (stderr is a pipe, as under nohup)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from test_bad_inputs import CONFIG, mmrl_subprocess, run_args  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from data_pipelines.synthetic import build_synthetic

    return build_synthetic(["color"], 12, 0, tmp_path_factory.mktemp("data"), image_size=56)


def train(data: Path, out: Path, *extra: str):
    return mmrl_subprocess("train", str(CONFIG), *run_args(data, out), *extra)


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory) -> tuple[Path, str]:
    """A run refused at its first rollout (after the model loaded and config.yaml was written), then re-run
    corrected into the same directory with progress on: 2 steps, checkpoint step-2."""
    out = tmp_path_factory.mktemp("run") / "run"
    failed = train(data, out, "rollout.max_completion_length=100000")
    assert failed.returncode == 2 and "max_new_tokens=100000 exceeds" in failed.stderr, failed.stderr[-2000:]
    assert (out / "config.yaml").is_file()  # what used to make the re-run "already hold a run"
    again = train(data, out, "trainer.max_steps=2", "trainer.progress=true", "trainer.num_threads=1")
    assert again.returncode == 0, again.stderr[-2000:]
    return out, again.stderr


def test_a_run_that_failed_before_its_first_step_does_not_block_its_re_run(finished):
    out, stderr = finished
    assert f"{out} held a run that stopped before its first step" in stderr
    assert [row["step"] for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())] == [1, 2]


def test_the_thread_count_comes_first_and_progress_is_plain_lines_when_not_on_a_terminal(finished):
    out, stderr = finished
    lines = stderr.splitlines()
    threads = [i for i, line in enumerate(lines) if line.startswith("threads: ")]
    steps = [line for line in lines if line.startswith("train: step ")]
    assert len(threads) == 1 and "1 torch thread(s) per process (trainer.num_threads=1;" in lines[threads[0]]
    assert [line.split(",")[0] for line in steps] == ["train: step 1/2 (50%)", "train: step 2/2 (100%)"]
    assert all(" s/step, ETA " in line and ", reward " in line for line in steps), steps
    assert threads[0] < lines.index(steps[0])
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert first["threads"] == 1  # recorded with the run


def test_a_resume_with_a_changed_config_is_refused_naming_the_fields_unless_they_are_intended(data, finished):
    out, _ = finished
    before = (out / "config.yaml").read_bytes()
    changed = ["trainer.resume=auto", "trainer.max_steps=3", "optimizer.lr=5e-3", "rollout.group_size=8"]
    refused = train(data, out, *changed)
    assert refused.returncode == 2, refused.stderr[-2000:]
    error = [line for line in refused.stderr.splitlines() if line.startswith("mmrl train: error:")]
    assert len(error) == 1 and "Traceback" not in refused.stderr
    assert "rollout.group_size (4 -> 8)" in error[0] and "optimizer.lr (0.001 -> 0.005)" in error[0]
    assert "trainer.resume_allow_changes=[rollout.group_size,optimizer.lr]" in error[0]
    assert "trainer.max_steps" not in error[0]  # a longer run is what a resume is for
    assert (out / "config.yaml").read_bytes() == before and (out / "configs" / "step-0.yaml").is_file()

    resumed = train(data, out, *changed, "trainer.resume_allow_changes=[optimizer.lr,rollout]")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    segments = {p.name: yaml.safe_load(p.read_text()) for p in (out / "configs").iterdir()}
    assert sorted(segments) == ["step-0.yaml", "step-2.yaml"]  # steps 1-2 and step 3, each with its own config
    assert (segments["step-0.yaml"]["optimizer"]["lr"], segments["step-2.yaml"]["optimizer"]["lr"]) == (1e-3, 5e-3)
    assert yaml.safe_load((out / "config.yaml").read_text()) == segments["step-2.yaml"]


def test_build_tiny_refuses_a_non_empty_folder_and_overwrites_only_its_own(tmp_path, capsys):
    """`mmrl model build-tiny` replaced a built model by another preset, and rewrote a checkpoint's weights beside
    its COMPLETE and trainer_state.pt, without a word."""
    from mmrl.cli import main

    model = tmp_path / "model"
    assert main(["model", "build-tiny", str(model), "--preset", "tiny"]) == 0
    (model / "notes.txt").write_text("mine")
    first = (model / "model.safetensors").read_bytes()
    assert main(["model", "build-tiny", str(model), "--preset", "tiny", "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "is not empty" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1, err
    assert (model / "model.safetensors").read_bytes() == first  # refused: nothing written
    assert main(["model", "build-tiny", str(model), "--preset", "tiny", "--seed", "1", "--overwrite"]) == 0
    assert (model / "model.safetensors").read_bytes() != first and (model / "notes.txt").read_text() == "mine"
    checkpoint = tmp_path / "step-3"
    checkpoint.mkdir()
    for name in ("COMPLETE", "trainer_state.pt", "model.safetensors"):
        (checkpoint / name).write_text("the run's")
    capsys.readouterr()
    assert main(["model", "build-tiny", str(checkpoint), "--overwrite"]) == 2
    assert "holds no earlier tiny build" in capsys.readouterr().err
    assert {p.name: p.read_text() for p in checkpoint.iterdir()} == dict.fromkeys(
        ("COMPLETE", "trainer_state.pt", "model.safetensors"), "the run's")
