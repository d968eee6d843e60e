"""Registers `mmrl build-data cold-start CONFIG [key=value ...]`."""

from __future__ import annotations

import argparse
import json
import sys

from data_pipelines.registry import register_builder

EXAMPLES = """examples:
  mmrl build-data cold-start configs/cold_start/offline.yaml data=runs/quickstart/data/train.jsonl   # tiny preset
  mmrl build-data cold-start configs/cold_start/two_stage.yaml data=YOUR_DATA.jsonl out=data/cold \\
      stages.reason.concurrency=32
  # re-running resumes from <out>/cache.jsonl; a finished build generates nothing
"""


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config (see configs/cold_start/)")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. out=data/cold limit=100")


def _check(args: argparse.Namespace) -> None:
    """The config file exists and validates with the overrides (prompt files included); no model loads."""
    from data_pipelines.cold_start.config import load_cold_start_config

    if args.config is not None:
        load_cold_start_config(args.config, args.overrides)


def _run(args: argparse.Namespace) -> int:
    from data_pipelines.cold_start.build import build_cold_start
    from data_pipelines.cold_start.config import load_cold_start_config
    from mmrl.runs.directory import check_output_dir

    cfg = load_cold_start_config(args.config, args.overrides)
    check_output_dir(cfg.out, "out")
    report = build_cold_start(cfg)
    rejected = ", ".join(f"{k}={v}" for k, v in report["rejected"].items()) or "none"
    print(f"kept {report['kept']} of {report['input']} (rejected: {rejected}); generated now: "
          f"{report['generated_now']}; tokens per stage: {json.dumps(report['tokens_per_stage'])}")
    print(f"wrote {report['train']} and {cfg.out}/report.json, {cfg.out}/lengths.png")
    if report["failed"]:
        failed = ", ".join(f"{k}={v}" for k, v in report["failed"].items())
        print(f"warning: {sum(report['failed'].values())} items got no answer ({failed}); they are not in the "
              "output: re-run the same command to retry them", file=sys.stderr)
    return 0


register_builder("cold-start", "Vision-R1 modality bridging: VLM pseudo-CoT + description, text reasoner, verified",
                 _args, _run, EXAMPLES, check=_check)
