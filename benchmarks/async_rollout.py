"""Synchronous vs asynchronous GRPO (`rollout.max_staleness: 1`) on a CPU, side by side in one run.

    OMP_NUM_THREADS=1 python3 benchmarks/async_rollout.py                 # 2 x 24 steps, ~5 minutes on 2 cores
    OMP_NUM_THREADS=1 python3 benchmarks/async_rollout.py --steps 60      # a longer learning curve
    python3 benchmarks/async_rollout.py --work-dir DIR   # reuses DIR's data and SFT checkpoint from an earlier run

The quickstart's setting (configs/quickstart.yaml): its synthetic colour data and its cold-start SFT of the `small`
model (24 steps), then its first GRPO stage (G=8, 20 tokens, 4 prompts a step, lr 1e-4, vision tower frozen) run
twice from the same SFT checkpoint, each arm in its own process:

- sync: the synchronous loop (max_staleness 0) with 2 torch threads (`trainer.num_threads=2`);
- async: max_staleness 1, the trainer with 1 thread and the rollout worker with 1 (`rollout.worker_threads=1`).

Figures: samples/s (completions per second over the steps after `--warmup`; the async arm's first step includes
starting its worker), the mean training reward and accuracy of each block of steps (the learning curve: does the
one-step-stale policy learn as the synchronous one does?), and the async arm's mean staleness and importance-weight
effective sample size. Last line: `async_speedup=<async samples/s / sync samples/s>`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def _quickstart(*overrides: str):
    """configs/quickstart.yaml with `overrides` (its pipeline steps are read from it, never run as a pipeline)."""
    from mmrl.config import load_config

    return load_config(QUICKSTART, list(overrides))


def _dotted(settings: dict) -> list[str]:
    return [f"{key}={json.dumps(value)}" for key, value in settings.items()]  # JSON is YAML: values keep their type


def _step(kind: str):
    return next(step for step in _quickstart().pipeline if step.kind == kind)


def _sft_checkpoint(work: Path) -> tuple[Path, Path]:
    """The quickstart's data and cold-start SFT (its pipeline steps' own settings), into `work`."""
    import torch

    from data_pipelines.synthetic import build_synthetic
    from mmrl.sft.trainer import train_sft

    sft = _step("sft")
    done = work / "sft" / "checkpoints" / f"step-{sft.overrides['trainer.max_steps']}"
    if done.is_dir() and (work / "data" / "train.jsonl").is_file():  # an earlier run's (checkpoints are atomic)
        return work / "data" / "train.jsonl", done
    data_args = _step("build-data").args
    train = build_synthetic(
        data_args["tasks"],
        data_args["n"],
        data_args["seed"],
        work / "data",
        forms=data_args["forms"],
        image_size=data_args["image_size"],
        split="train",
    )
    settings = {
        **sft.overrides,
        "data.train": [str(train)],
        "trainer.output_dir": str(work / "sft"),
        "trainer.progress": False,
        "trainer.report_to": ["jsonl"],
        "trainer.num_threads": 2,
    }
    torch.set_num_threads(2)
    return train, train_sft(
        _quickstart(*_dotted(settings))
    ) / "checkpoints" / f"step-{sft.overrides['trainer.max_steps']}"


def _arm(name: str, work: Path, data: Path, checkpoint: Path, steps: int, overrides: dict) -> None:
    """One GRPO arm in this (fresh) process: the quickstart's config with its GRPO step's first stage's settings (its
    stages and cosine schedule span 200 steps)."""
    from mmrl.rl.trainer import train

    first = _step("train").overrides["stages"][0]
    settings = {
        "data.train": [str(data)],
        "model.name_or_path": str(checkpoint),
        "rollout.group_size": first["group_size"],
        "rollout.max_completion_length": first["max_completion_length"],
        "trainer.max_steps": steps,
        "trainer.output_dir": str(work / name),
        "trainer.save_steps": 0,
        "trainer.save_final": False,
        "trainer.sample_steps": 0,
        "trainer.progress": False,
        "trainer.report_to": ["jsonl"],
        "trainer.overwrite": True,
        **overrides,
    }
    train(_quickstart(*_dotted(settings)))


def _summary(run: Path, warmup: int, block: int) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"step"' in line]
    timed = rows[warmup:]
    # every step has the same completions n, so n / sum(n / rate) = steps / sum(1 / rate): the whole-run rate
    seconds = sum(1 / r["samples_per_s"] for r in timed if r["samples_per_s"])
    curve = []
    for start in range(0, len(rows), block):
        part = rows[start : start + block]
        curve.append(
            {
                "steps": f"{part[0]['step']}-{part[-1]['step']}",
                "reward": sum(r["reward/total"] for r in part) / len(part),
                "accuracy": sum(r.get("accuracy", float("nan")) for r in part) / len(part),
            }
        )
    out = {"samples_per_s": len(timed) / seconds if seconds else float("nan"), "curve": curve}
    if "async/staleness" in rows[-1]:
        out["mean_staleness"] = sum(r["async/staleness"] for r in rows) / len(rows)
        out["mean_is_ess"] = sum(r.get("rollout/is_ess", 1.0) for r in rows) / len(rows)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=24, help="GRPO steps per arm")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of samples/s")
    parser.add_argument("--block", type=int, default=6, help="steps per point of the learning curve")
    parser.add_argument("--group-size", type=int, default=None, help="G (default: the quickstart stage's, 8)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the quickstart stage's, 20")
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.steps <= args.warmup or args.warmup < 0 or args.block < 1:
        print(f"async_rollout: --steps ({args.steps}) must exceed --warmup ({args.warmup}) >= 0; --block >= 1")
        return 2
    if (args.group_size is not None and args.group_size < 2) or (
        args.max_new_tokens is not None and args.max_new_tokens < 1
    ):
        print(
            f"async_rollout: --group-size must be >= 2 and --max-new-tokens >= 1 (got {args.group_size}, "
            f"{args.max_new_tokens})"
        )
        return 2
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="mmrl-async-bench-"))
    started = time.perf_counter()
    data, checkpoint = _sft_checkpoint(work)
    print(f"SFT checkpoint: {checkpoint} ({time.perf_counter() - started:.0f} s)")
    sizes = {"rollout.group_size": args.group_size, "rollout.max_completion_length": args.max_new_tokens}
    sizes = {key: value for key, value in sizes.items() if value is not None}
    arms = {
        "sync": {"trainer.num_threads": 2},
        "async": {"trainer.num_threads": 1, "rollout.max_staleness": 1, "rollout.worker_threads": 1},
    }
    ctx = multiprocessing.get_context("spawn")  # each arm chooses its torch threads once, in its own process
    results = {}
    for name, overrides in arms.items():
        arm_started = time.perf_counter()
        process = ctx.Process(target=_arm, args=(name, work, data, checkpoint, args.steps, {**sizes, **overrides}))
        process.start()
        process.join()
        if process.exitcode != 0:
            print(f"async_rollout: the {name} arm failed (exit code {process.exitcode})")
            return 1
        results[name] = _summary(work / name, args.warmup, args.block)
        results[name]["wall_s"] = time.perf_counter() - arm_started
    print(f"{'arm':<6} {'samples/s':>10} {'wall s':>7}  reward / accuracy per block of {args.block} steps")
    for name, r in results.items():
        curve = "  ".join(f"{p['steps']}: {p['reward']:.2f}/{p['accuracy']:.2f}" for p in r["curve"])
        print(f"{name:<6} {r['samples_per_s']:>10.2f} {r['wall_s']:>7.0f}  {curve}")
    extra = results["async"]
    print(f"async: mean staleness {extra['mean_staleness']:.2f}, mean is_ess {extra['mean_is_ess']:.3f}")
    print(f"async_speedup={results['async']['samples_per_s'] / results['sync']['samples_per_s']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
