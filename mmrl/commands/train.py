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
        examples="  mmrl train configs/tests/grpo_tiny.yaml data.train=runs/quickstart/data/train.jsonl trainer.max_steps=4 \\\n"
        "      trainer.output_dir=runs/grpo_colors\n"
        "  mmrl train configs/tests/grpo_tiny.yaml data.train=runs/quickstart/data/train.jsonl trainer.max_steps=8 \\\n"
        "      trainer.output_dir=runs/grpo_colors trainer.resume=auto   # 4 more steps in runs/grpo_colors\n"
        "  accelerate launch --num_processes 2 -m mmrl train configs/tests/grpo_tiny.yaml \\\n"
        "      data.train=runs/quickstart/data/train.jsonl trainer.output_dir=runs/grpo_tiny_2proc\n"
        "Settings: `mmrl config show --doc` lists every field (model, data, rollout, algorithm, rewards, optimizer,\n"
        "trainer, stages, eval) with its description and default; `mmrl config show CONFIG` the values a config\n"
        "resolves to. Any field is set as section.key=value after the config.\n",
    )
    parser.add_argument("config", help="path to a YAML config")
    parser.add_argument("overrides", nargs="*", help="dotted overrides key.path=value")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mmrl.console import print_summary
    from mmrl.preflight import load_config
    from mmrl.rl.trainer import train

    started = time.perf_counter()
    cfg = load_config(args.config, args.overrides)
    from mmrl.workflow.seeds import refuse_output_dir_outside_pipeline, refuse_seeds_outside_pipeline

    refuse_seeds_outside_pipeline("train", args.overrides, cfg.seeds)
    refuse_output_dir_outside_pipeline("train", args.overrides, cfg.pipeline)
    run_dir = train(cfg)
    print_summary(run_dir, time.perf_counter() - started, cfg)
    return 0
