"""`mmrl plot`: plot the curves of a run — provided by the plots issue; until then it says so."""

from mmrl.commands import register_unavailable


def register(subparsers, name: str) -> None:
    register_unavailable(subparsers, name, "plot the curves of a run", "the plots issue")
