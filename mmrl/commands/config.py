"""`mmrl config show CONFIG [key=value ...]`: print the resolved config."""

from __future__ import annotations

import argparse
import typing
from typing import Any

import yaml
from pydantic import BaseModel

from mmrl.commands import add_command
from mmrl.config import to_yaml
from mmrl.preflight import load_config


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
        examples="  mmrl config show configs/quickstart.yaml trainer.max_steps=10\n"
        "  mmrl config show --doc                                # every field with its description (defaults)\n"
        "  mmrl config show configs/ui_r1.yaml --doc | grep -A3 '^rollout'\n",
    )
    show.add_argument("config", nargs="?", default=None, help="path to a YAML config (default: the defaults alone)")
    show.add_argument("--doc", action="store_true", help="annotate every field with its description")
    show.add_argument("overrides", nargs="*", help="dotted overrides key.path=value")
    show.set_defaults(func=run_show)


def _scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=10**6).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def documented_yaml(model: BaseModel, indent: int = 0) -> list[str]:
    """The config as YAML with each field's description as a comment (sections nest; lists stay inline)."""
    lines: list[str] = []
    pad = "  " * indent
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        doc = f"  # {field.description}" if field.description else ""
        if isinstance(value, BaseModel):
            lines.append(f"{pad}{name}:{doc}")
            lines.extend(documented_yaml(value, indent + 1))
        else:
            dumped = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
            if isinstance(dumped, list):
                dumped = [v.model_dump(mode="json", exclude_defaults=True) if isinstance(v, BaseModel) else v
                          for v in dumped]
            lines.append(f"{pad}{name}: {_scalar(dumped)}{doc}")
            item = _list_item_model(field.annotation)
            if item is not None:  # list of sections (rewards, stages, datasets, pipeline steps): document one item
                lines.extend(f"{pad}#   - {key}: {f.description}" for key, f in item.model_fields.items())
    return lines


def _list_item_model(annotation: Any) -> type[BaseModel] | None:
    for arg in typing.get_args(annotation) or ():
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
        inner = _list_item_model(arg)
        if inner is not None:
            return inner
    return None


def run_show(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    config = args.config
    if config is not None and "=" in config and not config.endswith((".yaml", ".yml")):
        overrides.insert(0, config)  # `mmrl config show key=value`: defaults plus overrides
        config = None
    cfg = load_config(config, overrides)
    print("\n".join(documented_yaml(cfg)) if args.doc else to_yaml(cfg).rstrip("\n"))
    return 0
