"""Reward registry: rewards by name, or a user's `path/to/file.py:function`.

A reward is `fn(completions: list[str], **columns) -> list[float | None]`: `columns` are the batch's Sample fields, each a
list with one entry per completion (`answer`, `task`, `choices`, `image_size`, `input_size`, ...), plus the spec's
`kwargs` as plain keyword arguments. Return `None` for an item that cannot be scored (it is counted and skipped by the
advantage), never a made-up 0 or 1. Accept `**_` so new columns do not break your reward.

>>> from mmrl.rewards import get_reward
>>> get_reward("format")(["<think>a</think><answer>b</answer>"])
[1.0]
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

from mmrl.errors import UserError
from mmrl.registry import Registry

RewardFn = Callable[..., list]
REWARDS: Registry[RewardFn] = Registry("reward", "rewards")


def register_reward(name: str, *, heavy: bool = False, batched: bool | str = False) -> Callable[[RewardFn], RewardFn]:
    """Register a reward under `name` (a duplicate name is an error).

    `heavy=True` marks rewards that may be slow or hang (math-verify, user code): the composite scores them item by item
    in killable worker processes. `batched=True` marks rewards that need the whole batch at once (group-aware shaping);
    `batched="dast"` means: only when the spec's kwarg `dast` is true. Other rewards are scored item by item whenever
    their batch call fails or runs out of time, so one bad item costs only itself.
    """

    def decorate(fn: RewardFn) -> RewardFn:
        if name in REWARDS:
            if REWARDS.get(name) is fn:
                return fn
            raise ValueError(f"reward '{name}' is already registered ({REWARDS.get(name).__module__})")
        fn.mmrl_reward_name = name  # type: ignore[attr-defined]
        fn.mmrl_heavy = heavy  # type: ignore[attr-defined]
        fn.mmrl_batched = batched  # type: ignore[attr-defined]
        REWARDS.add(name, fn)
        return fn

    return decorate


def is_batched(fn: RewardFn, kwargs: dict | None = None) -> bool:
    """Whether `fn`, called with the spec's `kwargs`, needs its whole batch at once (see `register_reward`)."""
    batched = getattr(fn, "mmrl_batched", False)
    return bool((kwargs or {}).get(batched)) if isinstance(batched, str) else bool(batched)


def list_rewards() -> list[str]:
    """Names of all registered rewards, sorted."""
    _load_builtins()
    return REWARDS.names()


def _load_builtins() -> None:
    import mmrl.rewards  # noqa: F401  (importing the package registers the built-in families)


def is_file_spec(spec: str) -> bool:
    path, sep, func = spec.rpartition(":")
    return bool(sep) and path.endswith(".py") and func.isidentifier()


def load_file_reward(spec: str) -> RewardFn:
    """Load `path/to/file.py:function`; the module gets a stable name so worker processes can load it too."""
    path_text, _, func_name = spec.rpartition(":")
    path = Path(path_text).expanduser().resolve()
    if not path.is_file():
        raise UserError(f"reward '{spec}': file {path} does not exist (use path/to/file.py:function)")
    module_name = "mmrl_user_reward_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    module = sys.modules.get(module_name)
    if module is None:
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        if module_spec is None or module_spec.loader is None:
            raise UserError(f"reward '{spec}': cannot import {path} as a Python module")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as err:
            del sys.modules[module_name]
            raise UserError(f"reward '{spec}': importing {path} failed: {type(err).__name__}: {err}") from err
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise UserError(f"reward '{spec}': {path} has no function '{func_name}'")
    return fn


def get_reward(name_or_spec: str) -> RewardFn:
    """A registered reward by name, or a user's reward given as `path/to/file.py:function`."""
    _load_builtins()
    if name_or_spec in REWARDS:
        return REWARDS.get(name_or_spec)
    if is_file_spec(name_or_spec):
        return load_file_reward(name_or_spec)
    close = difflib.get_close_matches(name_or_spec, REWARDS.names(), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise UserError(
        f"unknown reward '{name_or_spec}'.{hint} Valid names: {', '.join(REWARDS.names())}; "
        "or give a user reward as path/to/file.py:function"
    )


__all__ = ["REWARDS", "get_reward", "is_batched", "is_file_spec", "list_rewards", "load_file_reward", "register_reward"]
