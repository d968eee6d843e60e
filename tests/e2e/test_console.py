"""The console: libraries quiet by default (`--verbose` lets them talk), one end-of-run summary with next commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mmrl.console import run_summary

ROOT = Path(__file__).resolve().parents[2]
# "[WARNING]": DeepSpeed's log format (the dev extra installs it; transformers imports it and, without a GPU, it
# warns "Setting accelerator to CPU" on stdout)
LIBRARY_NOISE = ("FutureWarning", "DeprecationWarning", "Loading weights", "Writing model shards", "[WARNING]")


def _mmrl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    for key in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS"):  # the CLI's own defaults, not the suite's
        env.pop(key, None)
    return subprocess.run([sys.executable, "-m", "mmrl", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_train_is_quiet_and_ends_with_a_summary(tmp_path):
    from data_pipelines.synthetic import build_synthetic

    data = build_synthetic(["color"], 8, 0, tmp_path / "data", forms=["open"], image_size=56, split="train")
    done = _mmrl("train", str(ROOT / "configs/tests/grpo_tiny.yaml"), f"data.train={data}", "trainer.max_steps=2",
                 "trainer.output_dir=runs/quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    everything = done.stdout + done.stderr
    assert not [noise for noise in LIBRARY_NOISE if noise in everything], everything[-2000:]
    out = done.stdout
    assert out.count("run directory: runs/quiet") == 1
    assert "steps 2 in " in out and "final reward " in out
    assert "last checkpoint: runs/quiet/checkpoints/step-2" in out
    assert "mmrl eval --model runs/quiet" in out and "mmrl plot runs/quiet" in out
    assert "mmrl export runs/quiet/checkpoints/step-2" in out


def test_verbose_lets_library_output_through(tmp_path):
    quiet = _mmrl("model", "build-tiny", str(tmp_path / "a"), "--preset", "tiny", cwd=tmp_path)
    loud = _mmrl("model", "build-tiny", str(tmp_path / "b"), "--preset", "tiny", "--verbose", cwd=tmp_path)
    assert quiet.returncode == loud.returncode == 0
    assert "Writing model shards" not in quiet.stderr
    assert "Writing model shards" in loud.stderr


def test_summary_reports_best_eval_and_sft_loss(tmp_path):
    rows = ['{"step": 1, "loss": 2.0, "eval/accuracy": 0.25}', '{"step": 2, "loss": 1.5, "eval/accuracy": 0.5}',
            '{"step": 3, "loss": 1.25, "eval/accuracy": 0.375}']
    (tmp_path / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    text = run_summary(tmp_path, seconds=75, eval_data="data/synth/eval.jsonl")
    assert "steps 3 in 1m15s" in text and "final loss 1.250" in text
    assert "best eval accuracy 0.500 at step 2" in text
    assert "last checkpoint" not in text and "mmrl eval" not in text  # nothing to evaluate yet
    assert f"mmrl plot {tmp_path}" in text
