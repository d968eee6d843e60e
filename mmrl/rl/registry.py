"""A tiny name -> function registry: advantages and loss aggregations are looked up by their config name.

>>> REG = Registry("advantage")
>>> @REG.register("zero")
... def zero(x):
...     return 0
>>> REG.get("zero")(1), REG.names()
(0, ['zero'])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from mmrl.errors import UserError

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
    """Maps names to callables; duplicate names are a programming error, unknown names a user error."""

    def __init__(self, kind: str, config_field: str | None = None) -> None:
        self.kind = kind
        self.config_field = config_field or kind
        self._items: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        def decorator(fn: F) -> F:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._items[name] = fn
            return fn

        return decorator

    def get(self, name: str) -> F:
        try:
            return self._items[name]
        except KeyError:
            raise UserError(
                f"{self.config_field}: unknown {self.kind} '{name}'; valid names: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
