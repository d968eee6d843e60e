"""`mmrl build-data`: build synthetic, curriculum or cold-start datasets — provided by the data issue; until then it says so."""

from mmrl.commands import register_unavailable


def register(subparsers, name: str) -> None:
    register_unavailable(subparsers, name, "build synthetic, curriculum or cold-start datasets", "the data issue")
