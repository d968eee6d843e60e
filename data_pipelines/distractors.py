"""Wrong numeric options that do not give the gold away by its position.

Fixed offsets such as {n-1, n+1, n+2} make the gold the 2nd-smallest option of every item, a shortcut a policy learns
in a few steps. Here the number of distractors below the gold is drawn uniformly from what the bounds allow, so over a
build the gold is the smallest, 2nd, 3rd or largest option equally often, and the offsets are drawn from a window that
grows with the value (about 10%, at least k + 1 steps of the gold's last decimal).

>>> import random
>>> sorted(numeric_distractors("40", random.Random(0)), key=float)
['36', '38', '39']
>>> sorted(numeric_distractors("2.5", random.Random(1), minimum=0), key=float)
['2.4', '2.6', '2.8']
"""

from __future__ import annotations

import math
import random
from decimal import Decimal, InvalidOperation

WINDOW = Decimal("0.1")  # distractors lie within about 10% of the gold (at least k + 1 steps)


def numeric_distractors(value: str | int | float, rng: random.Random, k: int = 3, minimum: float | None = None,
                        maximum: float | None = None) -> list[str]:
    """`k` distinct wrong numbers near `value`, written with its decimals, within [minimum, maximum] when given.

    Returns [] when the bounds leave fewer than `k` other values.
    """
    text = str(value).replace(",", "").strip()
    try:
        number = Decimal(text)
    except InvalidOperation:
        return []
    if not number.is_finite():
        return []
    decimals = max(0, -number.as_tuple().exponent) if isinstance(number.as_tuple().exponent, int) else 0
    unit = Decimal(1).scaleb(-decimals)
    window = max(k + 1, math.ceil(abs(number) * WINDOW / unit))
    room_below = window if minimum is None else min(window, int((number - Decimal(str(minimum))) // unit))
    room_above = window if maximum is None else min(window, int((Decimal(str(maximum)) - number) // unit))
    room_below, room_above = max(0, room_below), max(0, room_above)
    feasible = [b for b in range(k + 1) if b <= room_below and k - b <= room_above]
    if not feasible:
        return []
    below = rng.choice(feasible)  # uniform rank of the gold among the k + 1 options
    steps = [-s for s in rng.sample(range(1, room_below + 1), below)]
    steps += rng.sample(range(1, room_above + 1), k - below)
    rng.shuffle(steps)
    return [f"{number + s * unit:.{decimals}f}" for s in steps]
