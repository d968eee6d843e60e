"""Environments by name: built-in ones registered here, a user's as `path/to/file.py:Class` (like rewards).

`get_environment(name)` returns the class (or factory); `kwargs_problem(name, kwargs)` says in one line what is wrong
with a config's `env.kwargs` (checked at config load, so a typo fails before any model loads).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
from collections.abc import Callable
from typing import Any

from mmrl.errors import UserError
from mmrl.registry import Registry, is_file_spec, load_from_file  # noqa: F401  (is_file_spec: re-exported)

EnvFactory = Callable[..., Any]
ENVIRONMENTS: Registry[EnvFactory] = Registry("environment", "env.name")


def register_environment(name: str) -> Callable[[EnvFactory], EnvFactory]:
    return ENVIRONMENTS.register(name)


# Modules that register the built-in environments when imported (by name: they import this registry, which must not
# import them back).
BUILTIN_MODULES = ("mmrl.envs.gui", "mmrl.envs.zoom")  # gui_steps, zoom_digit


def _load_builtins() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def list_environments() -> list[str]:
    _load_builtins()
    return ENVIRONMENTS.names()


def _load_file_environment(spec: str) -> EnvFactory:
    return load_from_file(spec, f"env.name '{spec}'", "mmrl_user_env_", "class or function")


def get_environment(name: str) -> EnvFactory:
    """The environment class (or factory) registered as `name`, or loaded from `path/to/file.py:Class`."""
    if is_file_spec(name):
        return _load_file_environment(name)
    _load_builtins()
    if name not in ENVIRONMENTS.names():
        near = difflib.get_close_matches(name, ENVIRONMENTS.names(), n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise UserError(
            f"env.name: unknown environment '{name}'{hint}; valid: {', '.join(ENVIRONMENTS.names())}; "
            "or a user environment as path/to/file.py:Class"
        )
    return ENVIRONMENTS.get(name)


def kwargs_problem(name: str, kwargs: dict[str, Any]) -> str | None:
    """One line naming the first key of `kwargs` that environment `name` does not take, or None."""
    factory = get_environment(name)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin or C factory: nothing to check against
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    valid = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key in kwargs:
        if key not in valid:
            near = difflib.get_close_matches(str(key), valid, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            return f"environment '{name}' has no argument '{key}'{hint}; valid: {', '.join(valid) or 'none'}"
    missing = [
        n
        for n, p in params.items()
        if p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and n not in kwargs
    ]
    if missing:
        return f"environment '{name}' needs argument(s) {', '.join(missing)} in env.kwargs"
    return None


__all__ = [
    "ENVIRONMENTS",
    "get_environment",
    "is_file_spec",
    "kwargs_problem",
    "list_environments",
    "register_environment",
]
