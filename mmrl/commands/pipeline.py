"""`mmrl pipeline`: run a recipe of steps (data, SFT, GRPO, eval) — provided by the pipeline issue; until then it says so."""

from mmrl.commands import register_unavailable


def register(subparsers, name: str) -> None:
    register_unavailable(subparsers, name, "run a recipe of steps (data, SFT, GRPO, eval)", "the pipeline issue")
