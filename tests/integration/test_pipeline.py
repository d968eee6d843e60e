"""`mmrl pipeline` on the tiny model: build data -> SFT -> GRPO -> eval end to end, skip on re-run, re-run one step,
resume an interrupted train step from its checkpoint, and the config errors a user meets first."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mmrl.errors import UserError
from mmrl.workflow import run_pipeline

ROOT = Path(__file__).resolve().parents[2]

FAST = {
    "trainer.report_to": ["jsonl"],
    "trainer.progress": False,
    "trainer.sample_steps": 0,
    "eval.limit": 4,
    "eval.max_new_tokens": 4,
    "eval.batch_size": 4,
}


def pipeline_config(root: Path) -> dict:
    return {
        "name": "pipe_tiny",
        "output_dir": str(root),
        "model": {"name_or_path": "tiny"},
        "data": {"min_pixels": 3136, "max_pixels": 3136},
        "rollout": {"group_size": 2, "max_completion_length": 4},
        "optimizer": {"lr": 1.0e-4},
        "trainer": {"prompts_per_step": 2, "batch_size": 2},
        "pipeline": [
            {"name": "data", "kind": "build-data",
             "args": {"builder": "synthetic", "tasks": ["color"], "n": 16, "eval_n": 8, "seed": 0,
                      "image_size": 56, "forms": ["open"]}},
            {"name": "eval_base", "kind": "eval", "args": {"model": "base", "label": "base"}},
            {"name": "sft", "kind": "sft", "overrides": {"trainer.max_steps": 2}},
            {"name": "eval_sft", "kind": "eval", "args": {"model": "sft", "label": "sft"}},
            {"name": "grpo", "kind": "train", "overrides": {"trainer.max_steps": 2, "trainer.save_steps": 1}},
            {"name": "eval_grpo", "kind": "eval", "args": {"label": "grpo"}},
        ],
    }


def write(tmp: Path, config: dict) -> Path:
    path = tmp / "pipe.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def overrides(**extra) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in {**FAST, **extra}.items()]


def run(path: Path) -> tuple[dict, list[str]]:
    lines: list[str] = []
    summary = run_pipeline(path, overrides(), echo=lines.append)
    return summary, lines


def status(lines: list[str], name: str) -> str:
    return next(line for line in lines if line.startswith("step ") and f" {name}" in line.split(":")[0]
                and "done in" not in line).split(": ", 1)[1]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The pipeline run once to completion (shared: the tests below re-run it)."""
    tmp = tmp_path_factory.mktemp("pipeline")
    root = tmp / "runs"
    path = write(tmp, pipeline_config(root))
    summary, lines = run(path)
    return path, root, summary, lines


def test_pipeline_runs_end_to_end_and_writes_the_summary(finished):
    path, root, summary, lines = finished
    assert [status(lines, n) for n in ("data", "eval_base", "sft", "eval_sft", "grpo", "eval_grpo")] == ["running"] * 6
    on_disk = json.loads((root / "summary.json").read_text())
    assert on_disk["accuracy"] == summary["accuracy"]
    assert set(summary["accuracy"]) == {"base", "sft", "grpo"}
    assert all(0.0 <= acc <= 1.0 for acc in summary["accuracy"].values())
    assert summary["n_eval"] == 4
    # the eval set is held out: drawn with another seed than the training set
    train = (root / "data" / "train.jsonl").read_text().splitlines()
    held = (root / "data" / "eval.jsonl").read_text().splitlines()
    assert len(train) == 16 and len(held) == 8
    assert {json.loads(r)["answer"] for r in held} and train[0] != held[0]
    # wiring: sft trained from the base, grpo from sft's final checkpoint, eval_grpo evaluated grpo's
    sft_done = json.loads((root / "sft" / "DONE.json").read_text())
    grpo_done = json.loads((root / "grpo" / "DONE.json").read_text())
    assert yaml.safe_load((root / "grpo" / "config.yaml").read_text())["model"]["name_or_path"] == \
        sft_done["outputs"]["checkpoint"]
    assert summary["models"] == {"base": "tiny", "sft": sft_done["outputs"]["checkpoint"],
                                 "grpo": grpo_done["outputs"]["checkpoint"]}
    assert grpo_done["outputs"]["checkpoint"].endswith("step-2")
    assert (root / "eval_grpo" / "report.json").is_file() and (root / "accuracy.png").is_file()
    assert (root / "grpo" / "plots").is_dir() and any((root / "grpo" / "plots").glob("*.png"))
    assert any(line.startswith("| base | tiny |") for line in lines)


def test_rerun_skips_every_finished_step(finished):
    path, root, _, _ = finished
    stamps = {d.name: (d / "DONE.json").stat().st_mtime_ns for d in root.iterdir() if (d / "DONE.json").exists()}
    summary, lines = run(path)
    assert [status(lines, n) for n in stamps] == ["skipped (done)"] * len(stamps)
    assert {d: (root / d / "DONE.json").stat().st_mtime_ns for d in stamps} == stamps
    assert set(summary["accuracy"]) == {"base", "sft", "grpo"}
    assert all(s["status"] == "skipped" for s in summary["steps"].values())


def test_a_claim_added_after_the_run_retrains_nothing(finished):
    # claims (and the seeds list) are read by the sweep's summary, not by any step: adding one after a first run must
    # not turn the finished training steps into "run with other settings" (it did: every sft/train step was refused)
    path, root, _, _ = finished
    claim = [{"name": "sft_helps", "arm": "eval.sft.accuracy", "baseline": "eval.base.accuracy",
              "direction": "greater"}]
    summary = run_pipeline(path, [*overrides(), f"claims={json.dumps(claim)}"], echo=(lines := []).append)
    assert [status(lines, n) for n in ("sft", "grpo")] == ["skipped (done)"] * 2
    assert all(s["status"] == "skipped" for s in summary["steps"].values())
    # a marker written before claims were left out (its digest and settings include them) is still the same step
    done_file = root / "grpo" / "DONE.json"
    kept = done_file.read_text()
    done = json.loads(kept)
    done["settings"]["claims"], done["config_digest"] = claim, "0" * 16
    done_file.write_text(json.dumps(done))
    try:
        _, lines = run(path)
        assert status(lines, "grpo") == "skipped (done)"
        done["settings"]["trainer"]["max_steps"] = 3  # a real change is still one
        done_file.write_text(json.dumps(done))
        with pytest.raises(UserError, match=r"other settings: grpo \(trainer.max_steps\)"):
            run(path)
    finally:
        done_file.write_text(kept)


def test_deleting_a_later_steps_marker_reruns_only_that_step(finished):
    path, root, _, _ = finished
    (root / "eval_grpo" / "DONE.json").unlink()
    _, lines = run(path)
    assert [status(lines, n) for n in ("data", "eval_base", "sft", "eval_sft", "grpo")] == ["skipped (done)"] * 5
    assert status(lines, "eval_grpo") == "running"
    assert (root / "eval_grpo" / "DONE.json").is_file()


def test_a_step_that_runs_again_reruns_only_the_steps_that_read_it(finished):
    # it re-ran every later step (one global flag): a re-run base eval re-ran the SFT and GRPO as no-op resumes, and
    # their seconds in summary.json became a resume's
    path, root, _, _ = finished
    seconds = json.loads((root / "sft" / "DONE.json").read_text())["seconds"]
    for name in ("eval_base", "eval_sft"):  # an eval's outputs name the model it read: not something it made
        (root / name / "DONE.json").unlink()
    summary, lines = run(path)
    assert [status(lines, n) for n in ("eval_base", "eval_sft")] == ["running"] * 2
    assert [status(lines, n) for n in ("data", "sft", "grpo", "eval_grpo")] == ["skipped (done)"] * 4
    assert summary["steps"]["sft"]["seconds"] == seconds
    # the SFT runs again (its marker gone): what reads it runs again, and what reads those, not what comes before;
    # GRPO trains again from the new SFT (it resumed its own final checkpoint: nothing trained, the old run kept)
    complete = (root / "grpo" / "checkpoints" / "step-2" / "COMPLETE").stat().st_mtime_ns
    (root / "sft" / "DONE.json").unlink()
    _, lines = run(path)
    assert [status(lines, n) for n in ("data", "eval_base")] == ["skipped (done)"] * 2
    assert status(lines, "sft") == "running"
    assert status(lines, "eval_sft") == "running again (it reads sft, which ran after it)"
    assert status(lines, "grpo") == "running again from scratch (it reads sft, which ran after it)"
    assert status(lines, "eval_grpo") == "running again (it reads grpo, which ran after it)"
    assert (root / "grpo" / "checkpoints" / "step-2" / "COMPLETE").stat().st_mtime_ns > complete
    rows = [json.loads(r) for r in (root / "grpo" / "metrics.jsonl").read_text().splitlines() if r.strip()]
    assert [r["step"] for r in rows if "step" in r] == [1, 2]


def test_a_run_stopped_after_an_upstream_step_reran_reruns_its_readers_next_time(finished, monkeypatch):
    # an invocation stopped after the SFT ran again but before the steps reading it: their old markers stay; the
    # next invocation must not skip them (they are older than the SFT they read)
    import mmrl.workflow.runner as runner

    path, root, _, _ = finished
    done = json.loads((root / "sft" / "DONE.json").read_text())
    (root / "sft" / "DONE.json").write_text(json.dumps({**done, "finished_ns": time.time_ns()}))
    execute = runner._execute

    def stopped_at_grpo(plan, step, *args):
        if step.name == "grpo":
            raise KeyboardInterrupt  # stopped as the re-run GRPO starts: its old marker must not count next time
        return execute(plan, step, *args)

    monkeypatch.setattr(runner, "_execute", stopped_at_grpo)
    with pytest.raises(KeyboardInterrupt):
        run(path)
    monkeypatch.setattr(runner, "_execute", execute)
    _, lines = run(path)
    assert [status(lines, n) for n in ("data", "eval_base", "sft", "eval_sft")] == ["skipped (done)"] * 4
    assert status(lines, "grpo") == "running again from scratch (it reads sft, which ran after it)"
    _, lines = run(path)
    assert all(status(lines, n) == "skipped (done)" for n in ("eval_sft", "grpo", "eval_grpo"))


def test_an_interrupted_train_step_resumes_from_its_checkpoint(finished, capsys):
    path, root, _, _ = finished
    grpo = root / "grpo"
    # simulate a crash after step 1 of 2: the step-1 checkpoint is complete, step 2 and DONE never got written
    shutil.rmtree(grpo / "checkpoints" / "step-2")
    (grpo / "DONE.json").unlink()
    assert (grpo / "checkpoints" / "step-1" / "COMPLETE").is_file()
    _, lines = run(path)
    assert status(lines, "sft") == "skipped (done)"
    assert status(lines, "grpo") == "running"
    assert status(lines, "eval_grpo") == "running again (it reads grpo, which ran after it)"
    assert "resumed from" in capsys.readouterr().err
    assert (grpo / "checkpoints" / "step-2" / "COMPLETE").is_file()
    rows = [json.loads(r) for r in (grpo / "metrics.jsonl").read_text().splitlines() if r.strip()]
    assert [r["step"] for r in rows if "step" in r][-1] == 2


def test_a_config_without_steps_names_the_file(tmp_path):
    path = write(tmp_path, {"name": "x", "model": {"name_or_path": "tiny"}})
    with pytest.raises(UserError, match=r"pipe\.yaml: no `pipeline:` steps"):
        run_pipeline(path)


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([{"name": "a", "kind": "deploy"}], r"pipeline\.0\.kind must be one of"),
        ([{"name": "a", "kind": "eval"}, {"name": "a", "kind": "eval", "args": {"label": "b"}}], "duplicate step name"),
        ([{"name": "e", "kind": "eval", "args": {"model": "sft"}}], "args.model 'sft' is not an earlier sft/train"),
        ([{"name": "d", "kind": "build-data", "args": {"builder": "synthetic", "n_train": 3}}],
         "unknown argument 'n_train'"),
        ([{"name": "d", "kind": "build-data", "args": {"builder": "nope"}}], "unknown builder 'nope'"),
        ([{"name": "../x", "kind": "eval"}], "plain directory name"),
    ],
)
def test_bad_steps_fail_before_anything_runs(tmp_path, steps, message):
    path = write(tmp_path, {"name": "x", "output_dir": str(tmp_path / "runs"), "pipeline": steps})
    with pytest.raises(UserError, match=message):
        run_pipeline(path)
    assert not (tmp_path / "runs").exists()


def test_cli_reports_a_missing_pipeline_in_one_line(tmp_path):
    path = write(tmp_path, {"name": "x"})
    proc = subprocess.run([sys.executable, "-m", "mmrl", "pipeline", str(path)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no `pipeline:` steps" in proc.stderr
