"""Load a config: defaults -> YAML (with `extends:`) -> dotted overrides -> validation, with one-line errors.

Every error names where the offending value came from (the YAML file that set it, or `command line`) and what to do.

>>> cfg = load_config(None, ["trainer.max_steps=3", "rollout.group_size=4"])
>>> cfg.trainer.max_steps, cfg.rollout.group_size
(3, 4)
"""

from __future__ import annotations

import copy
import difflib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from mmrl.config import trl_names
from mmrl.config.schema import MMRLConfig
from mmrl.errors import ConfigError

COMMAND_LINE = "command line"
log = logging.getLogger(__name__)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (check the path; configs live in configs/)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{where}: YAML syntax error: {problem}; fix the YAML at that line") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (got {type(data).__name__})")
    return data


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _record_sources(data: Any, source: str, sources: dict[str, str], prefix: str = "") -> None:
    if isinstance(data, dict):
        for key, value in data.items():
            dotted = f"{prefix}.{key}" if prefix else str(key)
            sources[dotted] = source
            _record_sources(value, source, sources, dotted)


def load_yaml_chain(path: str | os.PathLike, sources: dict[str, str], _chain: tuple[Path, ...] = (),
                    files: list[str] | None = None) -> dict[str, Any]:
    """Read `path`, resolving `extends:` (relative to the file) recursively; the child's values win. `files` collects
    the chain's files, base first (the order in which they win)."""
    resolved = Path(path).resolve()
    if resolved in _chain:
        names = " -> ".join(p.name for p in (*_chain, resolved))
        raise ConfigError(f"{path}: circular 'extends:' chain {names}; remove one of the extends")
    data = _read_yaml(Path(path))
    parent = data.pop("extends", None)
    if parent is None:
        _record_sources(data, str(path), sources)
        if files is not None:
            files.append(str(path))
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: 'extends' must be a relative path to a base YAML (got {parent!r})")
    parent_path = Path(path).parent / parent
    base = load_yaml_chain(parent_path, sources, (*_chain, resolved), files)
    _record_sources(data, str(path), sources)
    if files is not None:
        files.append(str(path))
    return _deep_merge(base, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (['a', 'b'], value parsed as a YAML scalar or list)."""
    if "=" not in text:
        raise ConfigError(f"{COMMAND_LINE}: override '{text}' must look like key.path=value (e.g. trainer.max_steps=10)")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"{COMMAND_LINE}: override '{text}' has an empty key; use key.path=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
        comment = _trailing_comment(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value, comment = raw, ""
    if comment:  # `output_dir=runs/exp #2` would silently be runs/exp
        raise ConfigError(f"{COMMAND_LINE}: override '{text}': '{comment.strip()}' starts a YAML comment, so the value "
                          f"would be {value!r}; quote the value ({key}='\"{raw.strip()}\"') or drop the comment")
    return key.split("."), value


def _trailing_comment(raw: str) -> str:
    """What YAML reads as a comment at the end of an override's value ('' when none)."""
    ends = [t.end_mark.index for t in yaml.scan(raw) if not isinstance(t, yaml.StreamEndToken)]
    rest = raw[max(ends, default=0):]
    return rest if rest.strip().startswith("#") else ""


def _set_dotted(data: dict[str, Any], parts: list[str], value: Any) -> None:
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = node[_list_index(node, part, parts[: i + 1])]
            continue
        if not isinstance(node.get(part), (dict, list)):
            node[part] = {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, parts)] = value
    else:
        node[last] = value


def _list_index(node: list[Any], part: str, path: list[str]) -> int:
    dotted = ".".join(path)
    if not node:
        parent = ".".join(path[:-1])
        raise ConfigError(f"{COMMAND_LINE}: '{dotted}': {parent} is empty in this config, so there is no item "
                          f"{part} to change; set the whole list instead ({parent}=[...])")
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"{COMMAND_LINE}: '{dotted}': index must be 0..{len(node) - 1} for this list")
    return int(part)


def valid_keys(model: type[BaseModel] = MMRLConfig, prefix: str = "") -> list[str]:
    """Every dotted key of the config tree (sections included)."""
    keys: list[str] = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}.{name}" if prefix else name
        keys.append(dotted)
        annotation = field.annotation
        for candidate in getattr(annotation, "__args__", ()) or (annotation,):
            inner = getattr(candidate, "__args__", None)
            for item in inner or (candidate,):
                if isinstance(item, type) and issubclass(item, BaseModel):
                    keys.extend(valid_keys(item, dotted))
    return keys


def field_source(sources: dict[str, str], default: str) -> Callable[[str], str]:
    """Where a dotted field's value came from (its YAML file or `command line`), `default` when none is recorded."""
    return lambda field: _source_for(tuple(field.split(".")), sources, default)


def _source_for(loc: tuple[Any, ...], sources: dict[str, str], default: str) -> str:
    parts = [str(p) for p in loc]
    while parts:
        dotted = ".".join(parts)
        if dotted in sources:
            return sources[dotted]
        parts.pop()
    return default


# Keys that once existed, with what replaces them (an old config gets the fix, not a "did you mean").
REMOVED_KEYS = {
    "trainer.bf16": "precision is set once by model.dtype (bf16 = fp32 weights with bf16 autocast); delete "
    "trainer.bf16 and set model.dtype to bf16",
}


def _section_fields() -> dict[str, list[str]]:
    """Each section of the config tree with its field names ('' for the top level); list sections (stages,
    rewards, pipeline) are left out, their keys need an index."""
    out: dict[str, list[str]] = {"": list(MMRLConfig.model_fields)}
    for section, field in MMRLConfig.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            out[section] = list(field.annotation.model_fields)
    return out


def _near_hint(loc: tuple[str, ...]) -> str:
    """' (did you mean ...?)' for an unknown top-level or section key. Besides the section's own fields it weighs the
    TRL names the section accepts (`optimizer.learning_rat` -> learning_rate, not warmup_ratio) and the fields of
    the other sections (`trainer.lr` -> optimizer.lr, `max_prompt_length` -> data.max_prompt_length)."""
    section, name = (loc[0], loc[1]) if len(loc) == 2 else ("", loc[0])
    fields = _section_fields()
    elsewhere = [f"{s}.{n}" if s else n for s, names in fields.items() if s != section for n in names if n == name]
    if elsewhere:
        return f" (did you mean {' or '.join(repr(k) for k in elsewhere)}?)"
    # own fields and accepted TRL names first; the other sections only when nothing here is close
    here = {n: f"'{section}.{n}'" if section else f"'{n}'" for n in fields.get(section, [])}
    for alias, mmrl_key in trl_names.aliases(section).items():
        here.setdefault(alias, f"'{section}.{alias}' (TRL's name for '{mmrl_key}')")
    near = difflib.get_close_matches(name, here, n=1, cutoff=0.6)
    if near:
        return f" (did you mean {here[near[0]]}?)"
    there = {n: f"'{s}.{n}'" for s, names in fields.items() if s not in ("", section) for n in names}
    for other in trl_names.HOME_SECTIONS:
        for alias, mmrl_key in trl_names.aliases(other).items() if other != section else ():
            there.setdefault(alias, f"'{other}.{alias}' (TRL's name for '{mmrl_key}')")
    near = difflib.get_close_matches(name, there, n=1, cutoff=0.8)
    if near:
        return f" (did you mean {there[near[0]]}?)"
    return " (see `mmrl config show` for the valid keys)"


def _format_error(err: dict[str, Any], sources: dict[str, str], default_source: str) -> str:
    loc = tuple(err.get("loc", ()))
    dotted = ".".join(str(p) for p in loc)
    where = _source_for(loc, sources, default_source)
    kind = err.get("type", "")
    got = err.get("input")
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden" and dotted in REMOVED_KEYS:
        return f"{where}: '{dotted}' was removed; {REMOVED_KEYS[dotted]}"
    if kind == "extra_forbidden" and len(loc) >= 3 and loc[-3] == "rewards" and str(loc[-2]).isdigit():
        # A reward's own argument written beside name/weight: say where it goes rather than "did you mean 'name'".
        from mmrl.config.rl import RewardSpec

        return (f"{where}: unknown key '{dotted}': a reward entry takes {', '.join(RewardSpec.model_fields)}; "
                f"the reward's own arguments go under kwargs ({{name: ..., kwargs: {{{loc[-1]}: ...}}}})")
    trl_hint = trl_names.hint(str(loc[-1])) if kind == "extra_forbidden" and 1 <= len(loc) <= 2 else None
    if trl_hint is not None:  # a TRL habit: the mmrl name, not the nearest spelling ('learning_rate' -> 'warmup_ratio')
        return f"{where}: unknown key '{dotted}': {trl_hint}"
    if kind == "extra_forbidden" and 1 <= len(loc) <= 2 and all(isinstance(p, str) for p in loc):
        return f"{where}: unknown key '{dotted}'{_near_hint(loc)}"
    if kind == "extra_forbidden":
        schema_path = ".".join(str(p) for p in loc if not str(p).isdigit())
        candidates = [k for k in valid_keys() if k.count(".") == schema_path.count(".")]
        near = difflib.get_close_matches(schema_path, candidates, n=1, cutoff=0.6)
        if near:  # put the list indices back: stages.1.grop_size -> stages.1.group_size
            names = iter(near[0].split("."))
            near = [".".join(str(p) if str(p).isdigit() else next(names, str(p)) for p in loc)]
        hint = f" (did you mean '{near[0]}'?)" if near else " (see `mmrl config show` for the valid keys)"
        return f"{where}: unknown key '{dotted}'{hint}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[kind]
        bound = next(iter(ctx.values()), "?")
        return f"{where}: {dotted} must be {op} {bound} (got {got!r})"
    if kind == "number_not_bool":  # see config/base.py: lax pydantic would read true as 1
        shown = json.dumps(got, default=repr)  # as the YAML/override spelled it: true, [0.9, true]
        return f"{where}: {dotted}{ctx.get('item', '')} must be {ctx.get('kind')}, not true/false (got {shown})"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"{where}: {dotted} must be an integer (got {got!r})"
    if kind in ("float_parsing", "float_type"):
        return f"{where}: {dotted} must be a number (got {got!r})"
    if kind in ("bool_parsing", "bool_type"):
        return f"{where}: {dotted} must be true or false (got {got!r})"
    if kind == "list_type":  # `seeds=0`, `seeds=0,1`: the override needs YAML's brackets
        shown = "''" if got == "" else repr(got)
        return f"{where}: {dotted} must be a list, written [a, b] ([] for an empty one) (got {shown})"
    if kind == "literal_error":
        return f"{where}: {dotted} must be one of {ctx.get('expected', '?')} (got {got!r})"
    if kind == "missing":
        return f"{where}: {dotted} is required; add it"
    if kind == "value_error":
        message = str(ctx.get("error", err.get("msg", "")))
        return f"{where}: {message}" if not dotted else f"{where}: {dotted}: {message}"
    return f"{where}: {dotted or 'config'}: {err.get('msg', 'invalid value')} (got {got!r})"


def build_config(data: dict[str, Any], sources: dict[str, str] | None = None, default_source: str = "config",
                 explicit: list[str] | None = None) -> MMRLConfig:
    """Validate a raw mapping into `MMRLConfig`, raising a one-line `ConfigError` on the first problem.

    Types and ranges only: the registry names (rewards, estimators, losses, backends, builders) live in higher rooms
    and are checked by `mmrl.preflight`, which wraps this loader. `explicit`: keys set explicitly, in order (default:
    those from the command line); they win over derived values.
    """
    if explicit is None:
        explicit = [key for key, source in (sources or {}).items() if source == COMMAND_LINE]
    try:
        config = MMRLConfig.model_validate(data, context={"explicit": explicit})
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        raise ConfigError(_format_error(first, sources or {}, default_source)) from None
    return config


def load_raw(path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = ()) -> tuple[dict, dict]:
    """The merged mapping (YAML chain + overrides) and the source of each dotted key, before validation."""
    sources: dict[str, str] = {}
    files: list[str] = []
    data = MMRLConfig().model_dump(mode="json")
    if path is not None:
        data = _deep_merge(data, load_yaml_chain(path, sources, files=files))
    for text in overrides:
        parts, value = parse_override(text)
        _set_dotted(data, parts, value)
        sources.pop(".".join(parts), None)  # re-insert: the order of `sources` is the order the keys were given
        sources[".".join(parts)] = COMMAND_LINE
        _record_sources(value, COMMAND_LINE, sources, ".".join(parts))
    _trl_aliases(data, sources, default_source=str(path) if path else COMMAND_LINE, order=[*files, COMMAND_LINE])
    if path is not None and not data.get("name"):
        data["name"] = Path(path).stem
    return data, sources


def _trl_aliases(data: dict[str, Any], sources: dict[str, str], default_source: str,
                 order: list[str] | None = None) -> None:
    """TRL names written in the section mmrl keeps their setting in (`optimizer.learning_rate`,
    `rollout.num_generations`, `trainer.per_device_train_batch_size`) become mmrl's keys, values converted as the
    Python API does (`mmrl.config.trl_names`); the source of each stays the file or command line that gave it.

    An alias and its mmrl key are one setting: given by different sources, the later in `order` (base YAML, the
    YAML extending it, the command line) wins as for any key; given by the same source, which one is meant is
    unclear, so that is refused."""
    rank = {source: i for i, source in enumerate(order or [COMMAND_LINE])}
    for section in trl_names.HOME_SECTIONS:  # rollout before trainer: the batch is counted in num_generations
        node = data.get(section)
        if not isinstance(node, dict):
            continue
        known = MMRLConfig.model_fields[section].annotation.model_fields  # type: ignore[union-attr]
        found = {k: v for k, v in node.items() if k not in known and trl_names.home_section(k) == section}
        if not found:
            continue
        where = {k: sources.get(f"{section}.{k}", default_source) for k in found}
        translated = trl_names.translate(found, group_size=data["rollout"]["group_size"],
                                         iterations=data["algorithm"]["num_iterations"])
        if translated.problems:
            first = translated.problems[0]
            name = next((k for k in found if first.startswith(k)), next(iter(found)))
            raise ConfigError(f"{where[name]}: {section}.{first}")
        for note in translated.notes:
            log.warning("%s: %s.%s", default_source, section, note)
        for key, value in translated.without(set(sources)).items():
            alias = translated.origin[key]
            if key in sources:
                if sources[key] == where[alias]:
                    raise ConfigError(f"{where[alias]}: {section}.{alias} and {key} ({sources[key]}) set the same "
                                      "setting; give one")
                if rank.get(sources[key], -1) > rank.get(where[alias], -1):
                    continue  # the mmrl key came later (an override of the YAML's alias): it wins
            _set_dotted(data, key.split("."), value)
            sources.pop(key, None)  # re-insert: `explicit` follows the order of `sources`
            sources[key] = where[alias]
        for key in found:
            del node[key]


def load_config(path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = ()) -> MMRLConfig:
    """Defaults -> YAML at `path` (None: defaults only) -> `key.path=value` overrides -> validated config."""
    data, sources = load_raw(path, overrides)
    return build_config(data, sources, default_source=str(path) if path else COMMAND_LINE)


def apply_overrides(config: MMRLConfig, overrides: dict[str, Any] | list[str], source: str = COMMAND_LINE) -> MMRLConfig:
    """A new validated config with dotted overrides applied (a dict of key -> value, or `key=value` strings)."""
    data, sources = overridden(config, overrides, source)
    return build_config(data, sources, default_source=source, explicit=list(sources))


def overridden(config: MMRLConfig, overrides: dict[str, Any] | list[str], source: str) -> tuple[dict, dict]:
    """The mapping of `config` with `overrides` applied, and the source of each overridden key, before validation."""
    data = config.model_dump(mode="json")
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(t) for t in overrides)
    sources: dict[str, str] = {}
    for key, value in items:
        parts = key.split(".") if isinstance(key, str) else key
        _set_dotted(data, parts, value)
        sources[".".join(parts)] = source
    return data, sources


def to_yaml(config: MMRLConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def save_resolved(config: MMRLConfig, run_dir: str | os.PathLike) -> Path:
    """Write the resolved config as `<run_dir>/config.yaml` (reloadable with `load_config`)."""
    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.yaml"
    path.write_text(to_yaml(config), encoding="utf-8")
    return path
