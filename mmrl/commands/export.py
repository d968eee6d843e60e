"""`mmrl export`: export a checkpoint (merge LoRA) — provided by the GRPO trainer issue; until then it says so."""

from mmrl.commands import register_unavailable


def register(subparsers, name: str) -> None:
    register_unavailable(subparsers, name, "export a checkpoint (merge LoRA)", "the GRPO trainer issue")
