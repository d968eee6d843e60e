"""`mmrl data`: inspect and check datasets — provided by the data issue; until then it says so."""

from mmrl.commands import register_unavailable


def register(subparsers, name: str) -> None:
    register_unavailable(subparsers, name, "inspect and check datasets", "the data issue")
