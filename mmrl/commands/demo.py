"""`mmrl demo`: Gradio demos (chat, grounding, GUI, rewards, runs). Not in this version: the command says so, and
points at what covers the same ground today."""

from mmrl.commands import register_unavailable

INSTEAD = "meanwhile: `mmrl eval --model RUN_OR_CHECKPOINT --data DATA` shows answers and scores, `mmrl plot RUN` the curves"


def register(subparsers, name: str) -> None:
    register_unavailable(subparsers, name, "launch a Gradio demo", INSTEAD)
