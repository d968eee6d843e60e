"""The config a run sees: loaded and typed by `mmrl.config`, then every registry name checked against its registry.

A misspelt reward, advantage, loss aggregation, KL estimator, rollout backend or builder is caught here, before any
model, data or run directory is touched, instead of minutes (or hours) into a run. The registries live in the rooms
this module stands above (rl, rewards, generation, data_pipelines), which is why the check is not part of
`mmrl.config`: the config tree stays a low room that every other one may read. Each registry is asked for its names
through one function in `NAME_SOURCES`, so a registry that moves or merges with another needs one line changed here;
the registries are imported only when a config is checked, so importing this module stays light.

Entry points (the commands, the Python API, the pipeline) load their configs through `load_config`, `build_config`
and `apply_overrides` here; `mmrl.config`'s functions of the same names check types and ranges only.

>>> try:
...     load_config(None, ["algorithm.loss_aggregation=mean"])
... except ConfigError as err:
...     print(str(err).split(";")[0])
command line: algorithm.loss_aggregation: unknown loss aggregation 'mean'
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterator
from typing import Any

from mmrl.config import loader
from mmrl.config.schema import MMRLConfig
from mmrl.errors import ConfigError, UserError


def build_config(data: dict[str, Any], sources: dict[str, str] | None = None, default_source: str = "config",
                 explicit: list[str] | None = None) -> MMRLConfig:
    """`mmrl.config.loader.build_config` (types and ranges), then every registry name (`check_names`): a config that
    builds here names only rewards, estimators, losses, backends and builders that exist."""
    config = loader.build_config(data, sources, default_source, explicit)
    check_names(config, loader.field_source(sources or {}, default_source))
    return config


def load_config(path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = ()) -> MMRLConfig:
    """Defaults -> YAML at `path` (None: defaults only) -> `key.path=value` overrides -> a validated, name-checked
    config."""
    data, sources = loader.load_raw(path, overrides)
    return build_config(data, sources, default_source=str(path) if path else loader.COMMAND_LINE)


def apply_overrides(config: MMRLConfig, overrides: dict[str, Any] | list[str],
                    source: str = loader.COMMAND_LINE) -> MMRLConfig:
    """A new validated, name-checked config with dotted overrides applied (a dict of key -> value, or `key=value`
    strings)."""
    data, sources = loader.overridden(config, overrides, source)
    return build_config(data, sources, default_source=source, explicit=list(sources))


def _advantage_names() -> list[str]:
    from mmrl.rl.advantages import ADVANTAGES

    return ADVANTAGES.names()


def _aggregation_names() -> list[str]:
    from mmrl.rl.losses import AGGREGATIONS

    return AGGREGATIONS.names()


def _policy_loss_names() -> list[str]:
    from mmrl.rl.losses import POLICY_LOSSES

    return POLICY_LOSSES.names()


def _is_correction_names() -> list[str]:
    from mmrl.rl.mismatch import IS_CORRECTIONS

    return IS_CORRECTIONS.names()


def _entropy_control_names() -> list[str]:
    from mmrl.rl.entropy import ENTROPY_CONTROLS

    return ENTROPY_CONTROLS.names()


def _kl_names() -> list[str]:
    from mmrl.rl.kl import KL_ESTIMATORS

    return KL_ESTIMATORS.names()


def _backend_names() -> list[str]:
    from mmrl.generation.backends import BACKENDS

    return BACKENDS.names()


def _reward_names() -> list[str]:
    from mmrl.rewards.registry import list_rewards

    return list_rewards()


def _builder_names() -> list[str]:
    from data_pipelines.registry import load_builders

    return [name for name, _ in load_builders().items()]


# kind -> the function that lists the registered names of that kind.
NAME_SOURCES: dict[str, Callable[[], list[str]]] = {
    "advantage estimator": _advantage_names,
    "loss aggregation": _aggregation_names,
    "policy loss": _policy_loss_names,
    "importance-sampling correction": _is_correction_names,
    "entropy control": _entropy_control_names,
    "KL estimator": _kl_names,
    "rollout backend": _backend_names,
    "reward": _reward_names,
    "builder": _builder_names,
}


def _named_fields(cfg: Any) -> Iterator[tuple[str, str, str]]:
    """(dotted field, kind, value) of every registry name in the config."""
    yield "algorithm.advantage", "advantage estimator", cfg.algorithm.advantage
    yield "algorithm.loss_aggregation", "loss aggregation", cfg.algorithm.loss_aggregation
    yield "algorithm.policy_loss", "policy loss", cfg.algorithm.policy_loss
    yield "algorithm.is_correction", "importance-sampling correction", cfg.algorithm.is_correction
    yield "algorithm.entropy_control", "entropy control", cfg.algorithm.entropy_control
    if cfg.algorithm.kl_estimator is not None:  # None: the KL placement's own default estimator
        yield "algorithm.kl_estimator", "KL estimator", cfg.algorithm.kl_estimator
    yield "rollout.backend", "rollout backend", cfg.rollout.backend
    for i, spec in enumerate(cfg.rewards):
        yield f"rewards.{i}.name", "reward", spec.name
    for s, stage in enumerate(cfg.stages):
        for i, spec in enumerate(stage.rewards or []):
            yield f"stages.{s}.rewards.{i}.name", "reward", spec.name
    for task, name in cfg.eval.reward_for_task.items():
        yield f"eval.reward_for_task.{task}", "reward", name
    for i, step in enumerate(cfg.pipeline):
        if step.kind == "build-data" and isinstance(step.args.get("builder"), str):
            yield f"pipeline.{i}.args.builder", "builder", step.args["builder"]


def _unknown(kind: str, value: str, names: list[str]) -> str:
    near = difflib.get_close_matches(str(value), names, n=1)
    hint = f" (did you mean '{near[0]}'?)" if near else ""
    extra = "; or a user reward as path/to/file.py:function" if kind == "reward" else ""
    return f"unknown {kind} '{value}'{hint}; valid: {', '.join(names)}{extra}"


def _check_reward(value: str, names: list[str]) -> str | None:
    from mmrl.rewards.registry import is_file_spec, load_file_reward

    if value in names:
        return None
    if not is_file_spec(value):
        return _unknown("reward", value, names)
    try:
        load_file_reward(value)  # the file exists, imports, and defines the function
    except UserError as err:
        return str(err)
    return None


def check_names(cfg: Any, where: Callable[[str], str]) -> None:
    """Raise a one-line `ConfigError` for the first name no registry knows; `where(field)` names its source."""
    cache: dict[str, list[str]] = {}
    for field, kind, value in _named_fields(cfg):
        names = cache.setdefault(kind, NAME_SOURCES[kind]())
        problem = _check_reward(value, names) if kind == "reward" else (
            None if value in names else _unknown(kind, value, names))
        if problem is not None:
            raise ConfigError(f"{where(field)}: {field}: {problem}")
    _check_reward_kwargs(cfg, where)
    _check_reward_lists(cfg, where)
    _check_environment(cfg, where)


def _check_environment(cfg: Any, where: Callable[[str], str]) -> None:
    """`env.name` names an environment (built-in or file.py:Class) and `env.kwargs` are arguments it takes."""
    env = getattr(cfg, "env", None)
    if env is None or env.name is None:
        return
    from mmrl.envs.registry import get_environment, is_file_spec, kwargs_problem

    try:
        get_environment(env.name)
        problem = kwargs_problem(env.name, env.kwargs)
    except UserError as err:
        message = str(err) if str(err).startswith("env.name") else f"env.name: {err}"
        raise ConfigError(f"{where('env.name')}: {message}") from None
    if problem is not None:
        raise ConfigError(f"{where('env.kwargs')}: env.kwargs: {problem}")
    if not is_file_spec(env.name):  # a built-in checks its values when built (cheap, no side effects): build one now,
        try:  # or a bad value (gui_steps min_actions: 7) ends every episode as env_error and the run trains on nothing
            get_environment(env.name)(**env.kwargs)
        except UserError as err:
            raise ConfigError(f"{where('env.kwargs')}: env.kwargs: {err}") from None
    if cfg.algorithm.online_filter.enabled:
        raise ConfigError(f"{where('algorithm.online_filter.enabled')}: algorithm.online_filter does not take part "
                          "in multi-turn episodes (env.name is set); set algorithm.online_filter.enabled=false")
    if cfg.algorithm.advantage == "gdpo":  # found after the first rollout otherwise, with a message about `rewards:`
        raise ConfigError(f"{where('algorithm.advantage')}: algorithm.advantage gdpo normalises each reward's score; "
                          "multi-turn episodes have one return each (env.name is set); use grpo, dr_grpo or rloo")
    from mmrl.config.schema import _default_rewards

    # the environment scores the episodes: a reward list beside it would be ignored without a word
    ignored = ["rewards"] if list(cfg.rewards) != _default_rewards() else []
    ignored += [f"stages[{i}].rewards" for i, stage in enumerate(cfg.stages) if stage.rewards is not None]
    if ignored:
        raise ConfigError(f"{where(ignored[0])}: {ignored[0]} is not used with env.name set (the environment scores "
                          f"the episodes: env.episode_return); remove {ignored[0]} or env.name")


def _check_reward_kwargs(cfg: Any, where: Callable[[str], str]) -> None:
    """Every reward spec's kwargs are arguments its reward takes (a typo is otherwise silently ignored)."""
    from mmrl.rewards.registry import get_reward, kwargs_problem

    lists = [("rewards", cfg.rewards)]
    lists += [(f"stages.{s}.rewards", st.rewards) for s, st in enumerate(cfg.stages) if st.rewards is not None]
    for prefix, specs in lists:
        for i, spec in enumerate(specs):
            problem = kwargs_problem(spec.name, get_reward(spec.name), spec.kwargs) if spec.kwargs else None
            if problem is not None:
                field = f"{prefix}.{i}.kwargs"
                raise ConfigError(f"{where(field)}: {field}: {problem}")


def _check_reward_lists(cfg: Any, where: Callable[[str], str]) -> None:
    """Every reward list non-empty without duplicates; the online filter's metric is one of its rewards."""
    lists = [("rewards", cfg.rewards)]
    lists += [(f"stages.{s}.rewards", st.rewards) for s, st in enumerate(cfg.stages) if st.rewards is not None]
    filt = cfg.algorithm.online_filter
    for field, specs in lists:
        if not specs and not cfg.pipeline:
            raise ConfigError(f"{where(field)}: {field} is empty; give at least one reward, e.g. [{{name: accuracy}}]")
        names = [s.name for s in specs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"{where(field)}: {field}: '{duplicates[0]}' is listed twice; combine its weights "
                              "into one entry")
        if filt.enabled and specs and filt.metric not in names:
            raise ConfigError(f"{where('algorithm.online_filter.metric')}: algorithm.online_filter.metric "
                              f"'{filt.metric}' is not one of the rewards of {field} ({', '.join(names)}); filter on "
                              "one of them")
