"""`mmrl sft CONFIG [key=value ...]`: cold-start supervised fine-tuning on chain-of-thought targets."""

from __future__ import annotations

import argparse
import time

from mmrl.commands import add_command


def register(subparsers, name: str) -> None:
    parser = add_command(
        subparsers,
        name,
        help="cold-start SFT (loss on assistant tokens only)",
        description="Supervised fine-tuning on samples with a target `response` (e.g. <think>...</think>"
        "<answer>...</answer>).\nSame run directory, checkpoints, resume and multi-process support as `mmrl train`.",
        examples="  mmrl sft configs/vision_r1/cold_start_sft.yaml data.train=YOUR_COT.jsonl   # your own CoT data\n"
        "  mmrl sft configs/vision_r1/cold_start_sft.yaml model.name_or_path=tiny trainer.max_steps=10 \\\n"
        "      data.train=runs/quickstart/data/train.jsonl data.max_pixels=3136\n"
        "Settings: `mmrl config show --doc` lists every field with its description and default.\n",
    )
    parser.add_argument("config", help="path to a YAML config")
    parser.add_argument("overrides", nargs="*", help="dotted overrides key.path=value")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mmrl.console import print_summary
    from mmrl.preflight import load_config
    from mmrl.sft.trainer import train_sft

    started = time.perf_counter()
    cfg = load_config(args.config, args.overrides)
    from mmrl.workflow.seeds import refuse_output_dir_outside_pipeline, refuse_seeds_outside_pipeline

    refuse_seeds_outside_pipeline("sft", args.overrides, cfg.seeds)
    refuse_output_dir_outside_pipeline("sft", args.overrides, cfg.pipeline)
    run_dir = train_sft(cfg)
    print_summary(run_dir, time.perf_counter() - started, cfg)
    return 0
