"""`mmrl config show CONFIG [key=value ...]`: print the resolved config."""

from __future__ import annotations

import argparse

from mmrl.commands import add_command
from mmrl.config import load_config, to_yaml


def register(subparsers, name: str) -> None:
    parser = add_command(
        subparsers,
        name,
        help="show the resolved config",
        description="Work with configs: defaults -> YAML (with extends:) -> dotted overrides -> validation.",
        examples="  mmrl config show configs/quickstart.yaml\n  mmrl config show configs/tests/grpo_tiny.yaml trainer.max_steps=10 rollout.group_size=4\n",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = add_command(
        actions,
        "show",
        help="print the resolved config as YAML",
        description="Print the config that a run would use, after extends: and overrides, validated.",
        examples="  mmrl config show configs/quickstart.yaml trainer.max_steps=10\n",
    )
    show.add_argument("config", help="path to a YAML config")
    show.add_argument("overrides", nargs="*", help="dotted overrides key.path=value")
    show.set_defaults(func=run_show)


def run_show(args: argparse.Namespace) -> int:
    print(to_yaml(load_config(args.config, args.overrides)), end="")
    return 0
