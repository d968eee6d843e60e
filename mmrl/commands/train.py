"""`mmrl train CONFIG [key=value ...]`: GRPO and its variants (also under `accelerate launch -m mmrl train ...`)."""

from __future__ import annotations

import argparse
import time

from mmrl.commands import add_command


def register(subparsers, name: str) -> None:
    parser = add_command(
        subparsers,
        name,
        help="train with GRPO and its variants",
        description="Train a VLM with GRPO (Dr. GRPO, DAPO token loss, clip-higher, KL estimators, online filtering),\n"
        "rule-based rewards, and curriculum / PTST stages. Writes runs/<name>/ (config.yaml, metrics.jsonl, tb/,\n"
        "samples/, checkpoints/step-N/).",
        examples="  mmrl train configs/tests/grpo_tiny.yaml trainer.max_steps=4\n"
        "  mmrl train configs/mm_eureka.yaml trainer.resume=auto\n"
        "  accelerate launch --num_processes 2 -m mmrl train configs/tests/grpo_tiny.yaml\n",
    )
    parser.add_argument("config", help="path to a YAML config")
    parser.add_argument("overrides", nargs="*", help="dotted overrides key.path=value")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mmrl.config import load_config
    from mmrl.console import print_summary
    from mmrl.rl.trainer import train

    started = time.perf_counter()
    cfg = load_config(args.config, args.overrides)
    from mmrl.pipeline.seeds import refuse_seeds_outside_pipeline

    refuse_seeds_outside_pipeline("train", args.overrides, cfg.seeds)
    run_dir = train(cfg)
    print_summary(run_dir, time.perf_counter() - started, cfg)
    return 0
