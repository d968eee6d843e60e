"""Seeded prompt order with an exact, checkpointable position.

Every process draws the same global batch (same seed) and keeps its own share, so data order does not depend on the
number of processes and a resume continues with the very next prompt.

>>> s = PromptSampler(5, seed=0)
>>> first = s.next(3); s2 = PromptSampler(5, seed=0); s2.load_state_dict(s.state_dict())
>>> s.next(4) == s2.next(4)
True
"""

from __future__ import annotations

import random
from typing import Any


class PromptSampler:
    def __init__(self, n_items: int, seed: int, shuffle: bool = True) -> None:
        if n_items <= 0:
            raise ValueError("the sampler needs at least one item")
        self.n_items = n_items
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0
        self._order = self._make_order()

    def _make_order(self) -> list[int]:
        order = list(range(self.n_items))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def next(self, count: int) -> list[int]:
        """The next `count` indices of the global order (epochs roll over and reshuffle)."""
        out: list[int] = []
        while len(out) < count:
            if self.position >= self.n_items:
                self.epoch += 1
                self.position = 0
                self._order = self._make_order()
            take = min(count - len(out), self.n_items - self.position)
            out.extend(self._order[self.position: self.position + take])
            self.position += take
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "n_items": self.n_items}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._make_order()


def shard(items: list[Any], rank: int, world_size: int) -> list[Any]:
    """This process's share of a global batch (strided, so shares differ by at most one item)."""
    return items[rank::world_size]
