"""Small helpers shared by the reward families: per-item views of the batch columns."""

from __future__ import annotations

from typing import Any


def col(values: Any, n: int, default: Any = None) -> list[Any]:
    """A column as a list of `n` values: None -> `default` repeated; a list must have one entry per completion."""
    if values is None:
        return [default] * n
    if not isinstance(values, (list, tuple)) or len(values) != n:
        raise ValueError(f"a reward column must be a list with one entry per completion ({n}); got {values!r:.80}")
    return list(values)


def row_meta(columns: dict[str, Any], i: int, n: int) -> dict[str, Any]:
    """Item `i` of every list column of length `n` (the per-sample metadata such as precision or unit)."""
    return {k: v[i] for k, v in columns.items() if isinstance(v, (list, tuple)) and len(v) == n}
