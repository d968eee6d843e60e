"""Reward registry: rewards by name, or a user's `path/to/file.py:function`.

A reward is `fn(completions: list[str], **columns) -> list[float | None]`: `columns` are the batch's Sample fields, each a
list with one entry per completion (`answer`, `task`, `choices`, `image_size`, `input_size`, `model_frame`: the frame
the model answers boxes in, see `mmrl.models.interface`, ...), plus the spec's
`kwargs` as plain keyword arguments. Return `None` for an item that cannot be scored (it is counted and skipped by the
advantage), never a made-up 0 or 1. Accept `**_` so new columns do not break your reward.

A spec's `kwargs` are checked when the config loads (`kwargs_problem`): a built-in reward accepts only the keyword
parameters its signature names (a typo such as `tolerence` would otherwise vanish into its `**columns`); a user reward
that takes `**kwargs` accepts anything, one without them only its named parameters. Column names (`answer`, `task`,
...) are data, never spec kwargs.

>>> from mmrl.rewards import get_reward
>>> get_reward("format")(["<think>a</think><answer>b</answer>"])
[1.0]
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

from mmrl.errors import UserError
from mmrl.registry import Registry, is_file_spec, load_from_file  # noqa: F401  (is_file_spec: re-exported)

RewardFn = Callable[..., list]
REWARDS: Registry[RewardFn] = Registry("reward", "rewards")


def register_reward(
    name: str, *, heavy: bool = False, batched: bool | str = False, reads_answer: bool = False
) -> Callable[[RewardFn], RewardFn]:
    """Register a reward under `name` (a duplicate name is an error).

    `reads_answer=True` marks rewards that read the `<answer>` block: the composite counts their completions with
    several answer blocks as `<name>/multiple_answers` (such a completion has no answer, see `extract_answer`).

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
        fn.mmrl_reads_answer = reads_answer  # type: ignore[attr-defined]
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


def load_file_reward(spec: str) -> RewardFn:
    """Load `path/to/file.py:function`; the module gets a stable name so worker processes can load it too."""
    return load_from_file(spec, f"reward '{spec}'", "mmrl_user_reward_", "function")


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


def _column_names() -> frozenset[str]:
    """Names a reward receives as data columns: the Sample's reward columns and the trainer's per-completion extras."""
    from mmrl.data.sample import Sample

    sample_columns = Sample(id="", prompt="", answer=None).reward_columns()
    return frozenset([*sample_columns, "group_id", "completion_length", "max_completion_length", "model_frame"])


def reward_arguments(fn: RewardFn) -> tuple[list[str], bool]:
    """(the keyword arguments a spec may give `fn`, whether it also accepts any other one).

    Built-in rewards take `**columns` for the data, so their `**` does not mean "any argument": only their named
    parameters count. A user reward's `**kwargs` keeps accepting anything (mmrl cannot know what it reads)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a builtin or C callable without a signature: nothing to check against
        return [], True
    builtin = getattr(fn, "__module__", "").startswith("mmrl.rewards")
    open_ended = not builtin and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    columns = _column_names()
    named = [p.name for p in params[1:]  # the first parameter is the completions
             if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
             and p.name not in columns]  # fmt: skip
    return named, open_ended


def _frame_problem(name: str, frame: Any) -> str | None:
    # A box/point reward's own pred_frame: a typo (or 'auto') made every item unscorable (None), so nothing learned
    from mmrl.models.interface import COORDINATE_REWARDS, FRAMES

    if name in COORDINATE_REWARDS and frame is not None and frame not in FRAMES:
        return (f"reward '{name}': kwargs.pred_frame {frame!r} is not a frame; use one of {', '.join(FRAMES)}, or "
                "leave it out to read the model's own (model.pred_frame)")
    return None


def kwargs_problem(name: str, fn: RewardFn, kwargs: dict) -> str | None:
    """One line saying what is wrong with a spec's `kwargs` for reward `name`, or None when they are all accepted.

    >>> kwargs_problem("accuracy", get_reward("accuracy"), {"tolerence": 0.1})
    "reward 'accuracy' has no argument 'tolerence'; valid: tags, allow_boxed"
    """
    frame = _frame_problem(name, kwargs.get("pred_frame"))
    if frame is not None:
        return frame
    valid, open_ended = reward_arguments(fn)
    columns = _column_names()
    for key in kwargs:
        if key in columns:
            return (f"'{key}' is a data column (one value per sample, from the dataset), not a reward argument; "
                    f"remove it from kwargs (valid: {', '.join(valid) or 'none'})")
        if key in valid or open_ended:
            continue
        near = difflib.get_close_matches(str(key), valid, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        if not valid:
            return f"reward '{name}' takes no arguments; remove '{key}' from its kwargs"
        return f"reward '{name}' has no argument '{key}'{hint}; valid: {', '.join(valid)}"
    return None


__all__ = [
    "REWARDS", "get_reward", "is_batched", "is_file_spec", "kwargs_problem", "list_rewards", "load_file_reward",
    "register_reward", "reward_arguments",
]  # fmt: skip
