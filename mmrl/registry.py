"""The one name -> object registry: advantages, losses, KL estimators, builders and backends are looked up by the name
a config or the command line gives. `mmrl.preflight` validates config names through each registry's `names()`.

>>> REG = Registry("advantage")
>>> @REG.register("zero")
... def zero(x):
...     return 0
>>> REG.get("zero")(1), REG.names()
(0, ['zero'])
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

from mmrl.errors import UserError

F = TypeVar("F")


class Registry(Generic[F]):
    """Maps names to objects (functions, builders...); duplicate names are a programming error, unknown names a user
    error that lists the valid ones."""

    def __init__(self, kind: str, config_field: str | None = None) -> None:
        self.kind = kind
        self.config_field = config_field or kind
        self._items: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator form of `add`."""

        def decorator(fn: F) -> F:
            self.add(name, fn)
            return fn

        return decorator

    def add(self, name: str, item: F) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} '{name}' is already registered")
        self._items[name] = item

    def get(self, name: str) -> F:
        try:
            return self._items[name]
        except KeyError:
            raise UserError(
                f"{self.config_field}: unknown {self.kind} '{name}'; valid names: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def remove(self, name: str) -> None:
        """Forget `name` (a run-scoped registration, e.g. a Python callable reward); no error when absent."""
        self._items.pop(name, None)

    def values(self) -> list[F]:
        return list(self._items.values())

    def items(self) -> list[tuple[str, F]]:
        """(name, item) pairs in registration order (the order help texts show)."""
        return list(self._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __getitem__(self, name: str) -> F:
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)


def is_file_spec(spec: str) -> bool:
    """`path/to/file.py:name`: a user's object in their own file (rewards, environments)."""
    path, sep, name = spec.rpartition(":")
    return bool(sep) and path.endswith(".py") and name.isidentifier()


def load_from_file(spec: str, label: str, module_prefix: str, what: str) -> Callable[..., Any]:
    """The callable `name` of `path/to/file.py:name`, imported under a name stable for its path (worker processes import
    it again by that name). `label` starts each one-line error ("reward 'x.py:f'"); `what` names the object sought
    ("function", "class or function")."""
    path_text, _, name = spec.rpartition(":")
    path = Path(path_text).expanduser().resolve()
    if not path.is_file():
        usage = "function" if what == "function" else "Class"
        raise UserError(f"{label}: file {path} does not exist (use path/to/file.py:{usage})")
    module_name = module_prefix + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    module = sys.modules.get(module_name)
    if module is None:
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        if module_spec is None or module_spec.loader is None:
            raise UserError(f"{label}: cannot import {path} as a Python module")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as err:
            del sys.modules[module_name]
            raise UserError(f"{label}: importing {path} failed: {type(err).__name__}: {err}") from err
    found = getattr(module, name, None)
    if not callable(found):
        raise UserError(f"{label}: {path} has no {what} '{name}'")
    return found
