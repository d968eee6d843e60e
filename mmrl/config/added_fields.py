"""Settings saved by an older mmrl against the same settings now: a field this mmrl added since, at its default, is
not a change (a pipeline step's DONE.json and a resume's saved config would otherwise refuse every finished step or
checkpoint after an upgrade that adds a config field)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, get_args, get_origin

from pydantic import BaseModel


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models a value of `annotation` (or an item of it, for a list) can be; not a dict's values (their
    keys are names, not fields)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if get_origin(annotation) in (dict, Mapping):
        return []
    return [m for arg in get_args(annotation) for m in _models(arg)] if get_origin(annotation) else []


def _text(value: Any) -> str:
    """A value as JSON text, models at any depth dumped as config files hold them: `false` and `0` stay different."""
    def plain(item: Any) -> Any:
        if isinstance(item, BaseModel):
            return item.model_dump(mode="json")
        if isinstance(item, (list, tuple)):
            return [plain(x) for x in item]
        if isinstance(item, dict):
            return {str(k): plain(v) for k, v in item.items()}
        return item

    return json.dumps(plain(value), sort_keys=True, default=str)


def without_added_defaults(saved: Any, current: Any, model: type[BaseModel] | None,
                           fields: dict[str, type[BaseModel]] | None = None) -> Any:
    """`current` without the keys `saved` lacks whose value is `model`'s default for them, at every depth (sections,
    and the items of lists of sections, e.g. stages[]); `fields` gives models for top-level keys `model` lacks.

    >>> from mmrl.config import MMRLConfig
    >>> now = MMRLConfig().model_dump(mode="json")
    >>> old = {**now, "trainer": {k: v for k, v in now["trainer"].items() if k != "max_sampled_tokens"}}
    >>> without_added_defaults(old, now, MMRLConfig) == old
    True
    """
    if isinstance(saved, list) and isinstance(current, list) and len(saved) == len(current):
        return [without_added_defaults(s, c, model) for s, c in zip(saved, current)]
    if not (isinstance(saved, dict) and isinstance(current, dict) and model is not None):
        return current
    out = {}
    for key, value in current.items():
        field = model.model_fields.get(key)
        sub = (fields or {}).get(key)
        if sub is None and field is not None:
            sub = next(iter(_models(field.annotation)), None)
        if key not in saved:
            if field is not None and not field.is_required() and \
                    _text(field.get_default(call_default_factory=True)) == _text(value):
                continue  # added since `saved` was written, and left at its default
            out[key] = value
        else:
            out[key] = without_added_defaults(saved[key], value, sub)
    return out
