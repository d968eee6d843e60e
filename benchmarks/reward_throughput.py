"""Reward throughput: completions scored per second on 10,000 mixed completions, clean and with 1% hostile ones.

Mix (groups of 8 completions per prompt, as in GRPO): math (math-verify), mc, yes_no, count, grounding (IoU > 0.5),
scored with `accuracy` (weight 1) + `format` (weight 0.5) through `RewardComposite` (worker processes, default time
limits). The same mix is then scored again with `--hostile` (1%) of its completions replaced by the committed hostile
corpus (tests/fixtures/rewards/hostile_corpus.jsonl: power towers, a googol factorial, `1e999999999`, megabytes of
unclosed `\\boxed{` / `<answer>`, deeply nested brackets, overflowing boxes, hedges), each with its own gold and task;
every hostile item must score 0 (checked). For comparison, a naive serial loop calls the same rewards one completion
at a time in this process. Last line: `hostile_slowdown=<hostile seconds / clean seconds>` (the target is <= 2).

    OMP_NUM_THREADS=1 python3 benchmarks/reward_throughput.py --n 10000 --workers 2
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

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


CORPUS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "rewards" / "hostile_corpus.jsonl"


def hostile_rows() -> list[dict]:
    rows = []
    for line in CORPUS.read_text().splitlines():
        row = json.loads(line)
        spec = row.pop("completion_repeat", None)
        if spec:
            row["completion"] = spec["prefix"] + spec["repeat"] * spec["times"] + spec["suffix"]
        rows.append(row)
    return rows


def with_hostile(completions: list[str], columns: dict[str, list], share: float, seed: int = 1):
    """A copy of the mix with `share` of its completions (evenly spread) replaced by corpus items, golds included."""
    completions, columns = list(completions), {k: list(v) for k, v in columns.items()}
    rows, n = hostile_rows(), len(completions)
    count = round(n * share)
    positions = sorted(random.Random(seed).sample(range(n), count))
    for j, i in enumerate(positions):
        row = rows[j % len(rows)]
        completions[i] = row["completion"]
        columns["answer"][i], columns["task"][i] = row["answer"], row["task"]
        columns["choices"][i] = None
    return completions, columns, positions


def run(completions, columns, workers, batch) -> tuple[float, float, list]:
    """(pool start-up s, scoring s, accuracy scores) for the whole mix through one composite."""
    specs = [{"name": "accuracy", "weight": 1.0}, {"name": "format", "weight": 0.5}]
    start = time.perf_counter()
    scores: list = []
    with RewardComposite(specs, workers=workers) as rc:
        rc.score(completions[:8], {k: v[:8] for k, v in columns.items()})  # start the pool
        ready = time.perf_counter()
        for i in range(0, len(completions), batch):
            part = rc.score(completions[i : i + batch], {k: v[i : i + batch] for k, v in columns.items()})
            scores.extend(part.components["accuracy"])
        done = time.perf_counter()
    return ready - start, done - ready, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--hostile", type=float, default=0.01, help="share of completions replaced by the corpus")
    parser.add_argument("--repeat", type=int, default=3, help="clean/hostile run pairs; medians are reported")
    parser.add_argument("--batch", type=int, default=512, help="completions per score() call (a trainer step)")
    parser.add_argument("--serial", type=int, default=0, help="completions for the naive serial loop (0: skip)")
    args = parser.parse_args()
    completions, columns = make_batch(args.n)
    bad_completions, bad_columns, positions = with_hostile(completions, columns, args.hostile)
    clean_times, hostile_times = [], []
    for _ in range(args.repeat):  # alternate the two runs so that load on a shared machine hits both alike
        startup, clean_s, clean_scores = run(completions, columns, args.workers, args.batch)
        _, hostile_s, hostile_scores = run(bad_completions, bad_columns, args.workers, args.batch)
        clean_times.append(clean_s)
        hostile_times.append(hostile_s)
    clean_s, hostile_s = statistics.median(clean_times), statistics.median(hostile_times)
    wrong = [i for i in positions if hostile_scores[i] != 0.0]
    print(f"pool start-up: {startup:.2f}s (workers={args.workers}); median of {args.repeat} runs each")
    print(f"clean:   {args.n} completions in {clean_s:.2f}s = {args.n / clean_s:.0f} completions/s "
          f"(unscorable {sum(v is None for v in clean_scores)}; runs {', '.join(f'{t:.2f}' for t in clean_times)})")
    print(f"hostile: {args.n} completions ({len(positions)} from the hostile corpus) in {hostile_s:.2f}s = "
          f"{args.n / hostile_s:.0f} completions/s (unscorable {sum(v is None for v in hostile_scores)}, "
          f"hostile items not scored 0: {len(wrong)}; runs {', '.join(f'{t:.2f}' for t in hostile_times)})")
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
    print(f"hostile_slowdown={hostile_s / clean_s:.3f}")


if __name__ == "__main__":
    main()
