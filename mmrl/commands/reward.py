"""`mmrl reward`: score completions with a reward — provided by the rewards issue; until then it says so."""

from mmrl.commands import register_unavailable


def register(subparsers, name: str) -> None:
    register_unavailable(subparsers, name, "score completions with a reward", "the rewards issue")
