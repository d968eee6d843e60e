"""Synchronous vs asynchronous GRPO (`rollout.max_staleness: 1`) on a CPU, side by side in one run, over seeds.

    OMP_NUM_THREADS=1 python3 benchmarks/async_rollout.py                 # 2 x 24 steps, ~5 minutes on 2 cores
    OMP_NUM_THREADS=1 python3 benchmarks/async_rollout.py --seeds 0,1,2 --steps 60   # intervals over 3 seeds
    python3 benchmarks/async_rollout.py --work-dir DIR   # reuses DIR's data and SFT checkpoint from an earlier run
    python3 benchmarks/async_rollout.py --device cuda --no-sft --steps 4 --warmup 1 --json F   # the GPU check's step

The quickstart's setting (configs/quickstart.yaml): its synthetic colour data and its cold-start SFT of the `small`
model (24 steps), then its first GRPO stage (G=8, 20 tokens, 4 prompts a step, lr 1e-4, vision tower frozen) run
twice from the same SFT checkpoint, each arm in its own process:

- sync: the synchronous loop (max_staleness 0) with 2 torch threads (`trainer.num_threads=2`);
- async: max_staleness 1, the trainer with 1 thread and the rollout worker with 1 (`rollout.worker_threads=1`).

Each seed (`--seeds`, the GRPO runs' `trainer.seed`) runs both arms from the same SFT checkpoint (one SFT for all
seeds). Figures per seed: samples/s (completions per second over the steps after `--warmup`; the async arm's first
step includes starting its worker), the mean training reward and accuracy of each block of steps (the learning
curve: does the one-step-stale policy learn as the synchronous one does?), and the async arm's mean staleness and
importance-weight effective sample size. Over the seeds: the speed-up (async / sync samples/s; geometric mean and its
95% t-interval on the log scale) and the learning cost (async minus sync mean accuracy over the last half of the
steps, with its 95% t-interval); either is "not distinguishable" when its interval holds no change (1x, 0). One seed
gives no interval. Last line: `async_speedup=<geometric mean over seeds>`.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
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

    from mmrl.sft.trainer import train_sft

    sft = _step("sft")
    done = work / "sft" / "checkpoints" / f"step-{sft.overrides['trainer.max_steps']}"
    if done.is_dir() and (work / "data" / "train.jsonl").is_file():  # an earlier run's (checkpoints are atomic)
        return work / "data" / "train.jsonl", done
    train = _quickstart_data(work)
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


def _base_data(work: Path) -> tuple[Path, str]:
    """`--no-sft`: the quickstart's data and its base model (random weights): a speed check, whose curve means little."""
    return _quickstart_data(work), _quickstart().model.name_or_path


def _quickstart_data(work: Path) -> Path:
    """The quickstart's training data, built by its own data step's arguments into `work/data`."""
    from data_pipelines.synthetic import build_synthetic

    args = _step("build-data").args
    return build_synthetic(args["tasks"], args["n"], args["seed"], work / "data", forms=args["forms"],
                           image_size=args["image_size"], split="train")


def _arm(name: str, work: Path, data: Path, checkpoint: Path | str, steps: int, overrides: dict) -> None:
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


# 97.5% quantiles of Student's t for 1, 2, ... 15 degrees of freedom (more seeds: the last, slightly conservative)
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131]


def interval(values: list[float], log: bool = False) -> tuple[float, float | None, float | None]:
    """Mean and its 95% t-interval over seeds (`log`: of the logs, returned as the geometric mean and its bounds);
    no interval from one value.

    >>> interval([1.0, 3.0])
    (2.0, -10.706, 14.706)
    >>> interval([2.0])
    (2.0, None, None)
    """
    xs = [math.log(v) for v in values] if log else list(values)
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        low = high = None
    else:
        half = _T975[min(len(xs) - 2, len(_T975) - 1)] * statistics.stdev(xs) / math.sqrt(len(xs))
        low, high = mean - half, mean + half
    back = math.exp if log else float
    return tuple(None if v is None else round(back(v), 6) for v in (mean, low, high))


def verdict(low: float | None, high: float | None, none: float, more: str, less: str) -> str:
    """What an interval says about a change from `none` (1 for a ratio, 0 for a difference)."""
    if low is None:
        return "one seed: no interval"
    if low > none:
        return more
    return less if high < none else "not distinguishable"


def last_half_accuracy(run: Path) -> float:
    """Mean training accuracy over the last half of the run's steps (the learning curve's end)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"step"' in line]
    tail = rows[len(rows) // 2 :]
    return statistics.fmean(r.get("accuracy", float("nan")) for r in tail)


def over_seeds(per_seed: dict[int, dict]) -> dict:
    """The figures over seeds from each seed's {"sync": summary, "async": summary} (summaries of `_summary`, with
    `last_half_accuracy`)."""
    speedups = [r["async"]["samples_per_s"] / r["sync"]["samples_per_s"] for r in per_seed.values()]
    diffs = [r["async"]["last_half_accuracy"] - r["sync"]["last_half_accuracy"] for r in per_seed.values()]
    speed, speed_low, speed_high = interval(speedups, log=True)
    diff, diff_low, diff_high = interval(diffs)
    return {
        "seeds": list(per_seed),
        "speedup_per_seed": [round(v, 4) for v in speedups],
        "speedup": speed,
        "speedup_ci95": [speed_low, speed_high],
        "speedup_verdict": verdict(speed_low, speed_high, 1.0, "async faster", "async slower"),
        "accuracy_diff_per_seed": [round(v, 4) for v in diffs],
        "accuracy_diff": diff,
        "accuracy_diff_ci95": [diff_low, diff_high],
        "accuracy_diff_verdict": verdict(diff_low, diff_high, 0.0, "async learns more", "async learns less"),
    }


def _run_seed(seed: int, args, work: Path, data: Path, start: Path | str) -> dict | None:
    """Both arms of one seed, each in a fresh process (it chooses its torch threads once); None if one failed."""
    sizes = {"rollout.group_size": args.group_size, "rollout.max_completion_length": args.max_new_tokens}
    common = {key: value for key, value in sizes.items() if value is not None}
    common.update({"trainer.seed": seed, "trainer.device": args.device})
    arms = {
        "sync": {"trainer.num_threads": 2},
        "async": {"trainer.num_threads": 1, "rollout.max_staleness": 1, "rollout.worker_threads": 1},
    }
    ctx = multiprocessing.get_context("spawn")
    results = {}
    for name, overrides in arms.items():
        started = time.perf_counter()
        process = ctx.Process(
            target=_arm, args=(f"{name}-seed{seed}", work, data, start, args.steps, {**common, **overrides})
        )
        process.start()
        process.join()
        if process.exitcode != 0:
            print(f"async_rollout: the {name} arm of seed {seed} failed (exit code {process.exitcode})")
            return None
        run = work / f"{name}-seed{seed}"
        results[name] = _summary(run, args.warmup, args.block)
        results[name]["last_half_accuracy"] = last_half_accuracy(run)
        results[name]["wall_s"] = time.perf_counter() - started
    return results


def _print_seed(seed: int, results: dict, block: int) -> None:
    print(f"seed {seed}: {'arm':<6} {'samples/s':>10} {'wall s':>7}  reward / accuracy per block of {block} steps")
    for name, r in results.items():
        curve = "  ".join(f"{p['steps']}: {p['reward']:.2f}/{p['accuracy']:.2f}" for p in r["curve"])
        print(f"seed {seed}: {name:<6} {r['samples_per_s']:>10.2f} {r['wall_s']:>7.0f}  {curve}")
    extra = results["async"]
    print(
        f"seed {seed}: speed-up {extra['samples_per_s'] / results['sync']['samples_per_s']:.3f}; accuracy over the "
        f"last half {extra['last_half_accuracy']:.3f} (async) vs {results['sync']['last_half_accuracy']:.3f} (sync); "
        f"async mean staleness {extra['mean_staleness']:.2f}, mean is_ess {extra['mean_is_ess']:.3f}"
    )


def _bounds(low: float | None, high: float | None, digits: int) -> str:
    return "no interval" if low is None else f"95% CI [{low:.{digits}f}, {high:.{digits}f}]"


def _parse_seeds(text: str) -> list[int] | None:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        return None
    return seeds if seeds and len(set(seeds)) == len(seeds) else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=24, help="GRPO steps per arm")
    parser.add_argument("--seeds", default="0", help="comma-separated GRPO seeds, both arms each (e.g. 0,1,2)")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of samples/s")
    parser.add_argument("--block", type=int, default=6, help="steps per point of the learning curve")
    parser.add_argument("--group-size", type=int, default=None, help="G (default: the quickstart stage's, 8)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the quickstart stage's, 20")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="the arms' trainer.device")
    parser.add_argument("--no-sft", action="store_true", help="start from the base model (a speed check: no SFT)")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    seeds = _parse_seeds(args.seeds)
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
    if seeds is None:
        print(f"async_rollout: --seeds must be distinct integers separated by commas, e.g. 0,1,2 (got {args.seeds!r})")
        return 2
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="mmrl-async-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data, start = _base_data(work) if args.no_sft else _sft_checkpoint(work)
    print(f"{'base model' if args.no_sft else 'SFT checkpoint'}: {start} ({time.perf_counter() - started:.0f} s)")
    per_seed = {}
    for seed in seeds:
        results = _run_seed(seed, args, work, data, start)
        if results is None:
            return 1
        _print_seed(seed, results, args.block)
        per_seed[seed] = results
    figures = over_seeds(per_seed)
    n, half = len(seeds), args.steps - args.steps // 2
    print(
        f"speed-up (async / sync samples/s) over {n} seed(s): {figures['speedup']:.3f} (geometric mean), "
        f"{_bounds(*figures['speedup_ci95'], 3)}: {figures['speedup_verdict']}"
    )
    print(
        f"accuracy, async minus sync, mean of the last {half} of {args.steps} steps, over {n} seed(s): "
        f"{figures['accuracy_diff']:+.3f}, {_bounds(*figures['accuracy_diff_ci95'], 3)}: "
        f"{figures['accuracy_diff_verdict']}"
    )
    if args.json is not None:
        first = per_seed[seeds[0]]
        figures.update(
            sync_samples_per_s=round(first["sync"]["samples_per_s"], 3),
            async_samples_per_s=round(first["async"]["samples_per_s"], 3),
            mean_staleness=round(first["async"]["mean_staleness"], 3),
            mean_is_ess=round(first["async"]["mean_is_ess"], 4),
            device=args.device,
        )
        args.json.write_text(json.dumps(figures) + "\n")
    print(f"async_speedup={figures['speedup']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
