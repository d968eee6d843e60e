"""`mmrl demo`: launch a Gradio demo — provided by the demo issue; until then it says so."""

from mmrl.commands import register_unavailable


def register(subparsers, name: str) -> None:
    register_unavailable(subparsers, name, "launch a Gradio demo", "the demo issue")
