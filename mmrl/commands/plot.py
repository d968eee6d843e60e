"""`mmrl plot RUN_DIR`: PNG curves (reward, accuracy, completion length, KL, loss) with stage boundaries marked."""

from __future__ import annotations

import argparse

from mmrl.commands import add_command


def register(subparsers, name: str) -> None:
    parser = add_command(
        subparsers,
        name,
        help="plot the curves of a run",
        description="Read RUN_DIR/metrics.jsonl and write RUN_DIR/plots/*.png: reward (total and components), "
        "accuracy, completion length, KL and loss, with a dashed line where the stage changes.",
        examples="  mmrl plot runs/quickstart/grpo                 # -> runs/quickstart/grpo/plots/\n"
                 "  mmrl plot runs/quickstart/sft --out /tmp/sft-plots\n",
    )
    parser.add_argument("run_dir", help="run directory containing metrics.jsonl")
    parser.add_argument("--out", default=None, help="directory for the PNGs (default: RUN_DIR/plots)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mmrl.eval.plots import plot_run

    written, notes = plot_run(args.run_dir, args.out)
    for note in notes:
        print(f"note: {note}")
    for path in written:
        print(path)
    return 0
