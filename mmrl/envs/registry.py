"""Environments by name: built-in ones registered here, a user's as `path/to/file.py:Class` (like rewards).

`get_environment(name)` returns the class (or factory); `kwargs_problem(name, kwargs)` says in one line what is wrong
with a config's `env.kwargs` (checked at config load, so a typo fails before any model loads).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmrl.errors import UserError
from mmrl.registry import Registry

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


def is_file_spec(spec: str) -> bool:
    path, sep, name = spec.rpartition(":")
    return bool(sep) and path.endswith(".py") and name.isidentifier()


def _load_file_environment(spec: str) -> EnvFactory:
    path_text, _, name = spec.rpartition(":")
    path = Path(path_text).expanduser().resolve()
    if not path.is_file():
        raise UserError(f"env.name '{spec}': file {path} does not exist (use path/to/file.py:Class)")
    module_name = "mmrl_user_env_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    module = sys.modules.get(module_name)
    if module is None:
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        if module_spec is None or module_spec.loader is None:
            raise UserError(f"env.name '{spec}': cannot import {path} as a Python module")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as err:
            del sys.modules[module_name]
            raise UserError(f"env.name '{spec}': importing {path} failed: {type(err).__name__}: {err}") from err
    factory = getattr(module, name, None)
    if not callable(factory):
        raise UserError(f"env.name '{spec}': {path} has no class or function '{name}'")
    return factory


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
