"""Atomic checkpoints of a run and exact resume from them."""
