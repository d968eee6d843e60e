"""Sample-based accuracy metrics: the unbiased pass@k estimator (Chen et al., 2021) and mean@k.

>>> round(pass_at_k(n=5, c=2, k=2), 4)
0.7
>>> mean_at_k([1.0, 0.0, 1.0, 0.0])
0.5
"""

from __future__ import annotations

from collections.abc import Sequence
from math import comb


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of `k` samples drawn without replacement from `n` (of which `c` are correct) is
    correct: `1 - C(n - c, k) / C(n, k)`. Unbiased when more samples than k were drawn (n >= k)."""
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n (got n={n}, c={c})")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 1 <= k <= n (got n={n}, k={k})")
    if n - c < k:  # every draw of k contains a correct sample
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def mean_at_k(scores: Sequence[float]) -> float:
    """Mean score of the k samples of one item (the expected accuracy of a single sample)."""
    if not scores:
        raise ValueError("mean_at_k: no scores")
    return float(sum(scores)) / len(scores)


def pass_ks(k: int) -> list[int]:
    """The pass@j values worth reporting for k samples per item: 1, powers of two below k, and k."""
    values = {1, k}
    j = 2
    while j < k:
        values.add(j)
        j *= 2
    return sorted(values)
