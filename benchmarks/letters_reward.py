"""A reward for the GPU check's GRPO step (benchmarks/grpo_step.py), in a file of its own: reward workers import it,
and with nothing heavy to import they score from the first item (a module importing torch can take longer than the
reward's time limit to load on a busy machine, and the item is then unscorable)."""

from __future__ import annotations


def letters(completions: list[str], **columns) -> list[float]:
    """The fraction of a completion's characters that are letters. Random weights sample random text, so every group
    has a spread and non-zero advantages (an accuracy reward would be 0 everywhere)."""
    return [sum(ch.isalpha() for ch in text) / max(1, len(text)) for text in completions]
