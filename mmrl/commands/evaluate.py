"""`mmrl evaluate`: evaluate a model on a dataset — provided by the evaluation issue; until then it says so."""

from mmrl.commands import register_unavailable


def register(subparsers, name: str) -> None:
    register_unavailable(subparsers, name, "evaluate a model on a dataset", "the evaluation issue")
