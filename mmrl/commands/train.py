"""`mmrl train`: train with GRPO and its variants — provided by the GRPO trainer issue; until then it says so."""

from mmrl.commands import register_unavailable


def register(subparsers, name: str) -> None:
    register_unavailable(subparsers, name, "train with GRPO and its variants", "the GRPO trainer issue")
