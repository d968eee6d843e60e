"""Reward throughput: completions scored per second on 10,000 mixed completions.

Mix (groups of 8 completions per prompt, as in GRPO): math (math-verify), mc, yes_no, count, grounding (IoU > 0.5),
scored with `accuracy` (weight 1) + `format` (weight 0.5) through `RewardComposite` (worker processes), and, for
comparison, a naive serial loop calling the same rewards one completion at a time in this process.

    OMP_NUM_THREADS=1 python3 benchmarks/reward_throughput.py --n 10000 --workers 2
"""

from __future__ import annotations

import argparse
import random
import time

from mmrl.rewards import get_reward
from mmrl.rewards.composite import RewardComposite


def make_batch(n: int, seed: int = 0) -> tuple[list[str], dict[str, list]]:
    rng = random.Random(seed)
    completions: list[str] = []
    cols: dict[str, list] = {"answer": [], "task": [], "choices": [], "image_size": [], "input_size": []}
    while len(completions) < n:
        kind = rng.choice(["math", "math", "mc", "yes_no", "count", "grounding"])
        a, b = rng.randint(1, 50), rng.randint(2, 9)
        for _ in range(8):
            good = rng.random() < 0.5
            think = "<think>" + "step " * rng.randint(5, 60) + "</think>"
            if kind == "math":
                gold, pred = f"\\frac{{{a}}}{{{b}}}", (f"\\frac{{{2 * a}}}{{{2 * b}}}" if good else f"{a}/{b + 1}")
            elif kind == "mc":
                gold, pred = "C", ("(C) blue" if good else "A")
            elif kind == "yes_no":
                gold, pred = "yes", ("Yes." if good else "no")
            elif kind == "count":
                gold, pred = str(a), (str(a) if good else "three")
            else:
                gold, pred = [a, a, a + 40, a + 40], (f"[{a / 2}, {a / 2}, {a / 2 + 20}, {a / 2 + 20}]" if good else "[0, 0, 5]")
            completions.append(f"{think}<answer>{pred}</answer>" if rng.random() < 0.9 else f"{think} {pred}")
            cols["answer"].append(gold)
            cols["task"].append(kind)
            cols["choices"].append(["red", "green", "blue", "pink"] if kind == "mc" else None)
            cols["image_size"].append((200, 200))
            cols["input_size"].append((100, 100))
    return completions[:n], {k: v[:n] for k, v in cols.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--batch", type=int, default=512, help="completions per score() call (a trainer step)")
    parser.add_argument("--serial", type=int, default=2000, help="completions for the naive serial loop (0: skip)")
    args = parser.parse_args()
    completions, columns = make_batch(args.n)
    specs = [{"name": "accuracy", "weight": 1.0}, {"name": "format", "weight": 0.5}]
    start = time.perf_counter()
    with RewardComposite(specs, workers=args.workers) as rc:
        rc.score(completions[:8], {k: v[:8] for k, v in columns.items()})  # start the pool
        ready = time.perf_counter()
        unscorable = 0
        for i in range(0, args.n, args.batch):
            part = rc.score(completions[i : i + args.batch], {k: v[i : i + args.batch] for k, v in columns.items()})
            unscorable += sum(t is None for t in part.total)
        done = time.perf_counter()
    rate = args.n / (done - ready)
    print(f"pool start-up: {ready - start:.2f}s (workers={rc.workers})")
    print(f"composite: {args.n} completions in {done - ready:.2f}s = {rate:.0f} completions/s (unscorable {unscorable})")
    if args.serial:
        m = min(args.serial, args.n)
        accuracy, fmt = get_reward("accuracy"), get_reward("format")
        from mmrl.rewards.accuracy import parse_math_gold

        parse_math_gold.cache_clear()
        start = time.perf_counter()
        for i in range(m):
            row = {k: [v[i]] for k, v in columns.items()}
            accuracy([completions[i]], **row)
            fmt([completions[i]])
        elapsed = time.perf_counter() - start
        print(f"naive serial loop (in-process, no timeouts): {m} completions in {elapsed:.2f}s = {m / elapsed:.0f}/s")


if __name__ == "__main__":
    main()
