"""How mmrl's GRPO step scales with the group size G and the completion length: a markdown table.

For every (G, length) cell, mmrl's trainer runs as in `benchmarks/grpo_vs_trl.py` (same data, reward, settings;
`--warmup` untimed steps, then `--steps` timed ones; a fresh trainer per cell) and the table gives samples/s, seconds
per step, the prompt's share of the step and the fraction of the physical bound (useful FLOPs by
`benchmarks/flops.py` over the matmul rate measured right after the cell, median of the timings). The prompt is
timed where it runs: the rollout's prefill (`run_prefix` in the decode loop: vision tower + the prompt through the
language model, once per prompt) and the training forward's prompt pass (`run_prefix` in `completion_logprobs`,
forward only: its backward is inseparable from the completions'). Neither should grow with G.

    OMP_NUM_THREADS=1 python3 benchmarks/grpo_scaling.py              # tiny preset, G 4/8/16 x 64/128/256 tokens
    OMP_NUM_THREADS=1 python3 benchmarks/grpo_scaling.py --group-sizes 8 --lengths 64,128 --preset small
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks import grpo_vs_trl as referee  # noqa: E402
from benchmarks._common import PhaseClock, bound_fraction, samples_per_second, step_flops  # noqa: E402
from benchmarks.flops import matmul_rate  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--group-sizes", default="4,8,16", help="comma-separated G values (rows)")
    p.add_argument("--lengths", default="64,128,256", help="comma-separated forced completion lengths (columns)")
    p.add_argument("--steps", type=int, default=2, help="timed steps per cell")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per cell")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--image-size", type=int, default=448)
    p.add_argument("--prompts-per-step", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--freeze-vision-tower", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        args.group_sizes = [int(v) for v in args.group_sizes.split(",")]
        args.lengths = [int(v) for v in args.lengths.split(",")]
    except ValueError:
        p.error("--group-sizes and --lengths take comma-separated integers, e.g. 4,8,16")
    if args.steps < 1 or args.warmup < 1 or min(args.group_sizes) < 2 or min(args.lengths) < 1:
        p.error("--steps and --warmup must be >= 1, every G >= 2 and every length >= 1")
    return args


def run_cell(args: argparse.Namespace, group_size: int, length: int, work: Path) -> dict[str, Any]:
    """One (G, length) cell: mmrl's timed run with the prompt passes timed too."""
    from mmrl.generation import hf_decode
    from mmrl.models import logprobs

    cell = referee.parse_args([
        "--preset", args.preset, "--steps", str(args.steps), "--warmup", str(args.warmup),
        "--group-size", str(group_size), "--max-new-tokens", str(length), "--image-size", str(args.image_size),
        "--prompts-per-step", str(args.prompts_per_step), "--threads", str(args.threads), "--seed", str(args.seed),
        *(["--freeze-vision-tower"] if args.freeze_vision_tower else [])])
    data = referee.build_data(cell, work / "data")
    originals = [(hf_decode, hf_decode.run_prefix), (logprobs, logprobs.run_prefix)]
    clock = PhaseClock()
    clock.wrap(hf_decode, "run_prefix", "rollout prefill")
    clock.wrap(logprobs, "run_prefix", "update prompt forward")
    try:
        torch.manual_seed(args.seed)
        result = referee.run_mmrl(cell, data, work, clock)
    finally:
        for module, function in originals:
            module.run_prefix = function
    rate = matmul_rate("cpu")
    useful = step_flops(result["config"], result["prompt_tokens"], args.image_size, args.prompts_per_step, group_size,
                        length, vision_trainable=not args.freeze_vision_tower)
    per_step = result["seconds"] / args.steps
    return {"G": group_size, "length": length, "samples/s": samples_per_second(result),
            "s/step": per_step, "prefill": result["clock"].get("rollout prefill", 0.0) / args.steps,
            "prompt fwd": result["clock"].get("update prompt forward", 0.0) / args.steps,
            "useful GFLOP": useful / 1e9, "matmul GFLOP/s": rate / 1e9,
            "fraction": bound_fraction(useful, rate, per_step)}


def markdown(cells: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = ["| G | length | samples/s | s/step | rollout prefill s/step | update prompt forward s/step "
             "| useful GFLOP/step | matmul GFLOP/s | fraction of bound |", "|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        lines.append(f"| {c['G']} | {c['length']} | {c['samples/s']:.2f} | {c['s/step']:.3f} | {c['prefill']:.3f} | "
                     f"{c['prompt fwd']:.3f} | {c['useful GFLOP']:.1f} | {c['matmul GFLOP/s']:.1f} | "
                     f"{c['fraction']:.3f} |")
    lines += ["", "samples/s (rows G, columns completion length):", "",
              "| G \\ length | " + " | ".join(str(n) for n in args.lengths) + " |",
              "|---|" + "---|" * len(args.lengths)]
    by_cell = {(c["G"], c["length"]): c for c in cells}
    for g in args.group_sizes:
        lines.append(f"| {g} | " + " | ".join(f"{by_cell[(g, n)]['samples/s']:.2f}" for n in args.lengths) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    from mmrl.rewards.registry import register_reward

    register_reward(referee.REWARD_NAME)(referee.distinct_words)
    print(f"# preset={args.preset} image={args.image_size}x{args.image_size} prompts/step={args.prompts_per_step} "
          f"vision_tower={'frozen' if args.freeze_vision_tower else 'trainable'} warmup={args.warmup} "
          f"steps={args.steps} threads={args.threads}", flush=True)
    cells = []
    for g in args.group_sizes:
        for length in args.lengths:
            with tempfile.TemporaryDirectory(prefix="mmrl-scaling-") as tmp:
                cells.append(run_cell(args, g, length, Path(tmp)))
            c = cells[-1]
            print(f"# G={g} length={length}: {c['samples/s']:.2f} samples/s, {c['s/step']:.3f} s/step, "
                  f"prefill {c['prefill']:.3f} s/step", flush=True)
    print(markdown(cells, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
