"""`mmrl sft`: cold-start supervised fine-tuning — provided by the SFT issue; until then it says so."""

from mmrl.commands import register_unavailable


def register(subparsers, name: str) -> None:
    register_unavailable(subparsers, name, "cold-start supervised fine-tuning", "the SFT issue")
