"""Shared base for config sections: unknown keys are errors, every field carries a description."""

from __future__ import annotations

import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError


def _members(annotation: Any) -> list[Any]:
    """The alternatives a field accepts: `int | None` -> [int]; `Annotated[float, ...]` -> [float]."""
    if get_origin(annotation) is Annotated:
        return _members(get_args(annotation)[0])
    if get_origin(annotation) in (Union, types.UnionType):
        return [m for arg in get_args(annotation) for m in _members(arg)]
    return [] if annotation is type(None) else [annotation]


def _item_types(annotation: Any, index: int) -> list[Any]:
    """What item `index` of a list/tuple value may be, over every list/tuple alternative of the field."""
    out: list[Any] = []
    for member in _members(annotation):
        origin, args = get_origin(member), get_args(member)
        if origin in (list, set, frozenset) and args:
            out.extend(_members(args[0]))  # list[Annotated[int, Field(ge=0)]]: the item is an int
        elif origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            out.extend(_members(args[0]))
        elif origin is tuple and index < len(args):
            out.extend(_members(args[index]))
    return out


def _number_kind(members: list[Any]) -> str | None:
    """'an integer' / 'a number' when these alternatives take a number but no bool (nor Any), else None."""
    if not members or any(m is bool or m is Any for m in members):
        return None
    if float in members:
        return "a number"
    return "an integer" if int in members else None


def bool_for_number(annotation: Any, value: Any) -> tuple[str, str] | None:
    """(where inside the value, what it must be) when `value` puts a bool where the field wants a number.

    >>> bool_for_number(int | None, True), bool_for_number(tuple[float, float], [0.5, False])
    (('', 'an integer'), ('[1]', 'a number'))
    >>> bool_for_number(bool | None, True), bool_for_number(int, 3), bool_for_number(list[str], [True])
    (None, None, None)
    """
    if isinstance(value, bool):
        kind = _number_kind(_members(annotation))
        return ("", kind) if kind else None
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            if isinstance(item, bool) and (kind := _number_kind(_item_types(annotation, i))):
                return f"[{i}]", kind
    return None


class NumbersNotBools(BaseModel):
    """Refuses `true`/`false` for int and float fields (also inside list/tuple fields).

    Pydantic's lax mode reads True as 1, so `trainer.max_steps=true` would silently train one step. Everything else
    lax mode does stays (the string "3" -> 3, an int for a float field), which YAML files and overrides rely on.
    """

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        found = bool_for_number(field.annotation, value) if field is not None else None
        if found is None:
            return value
        where, kind = found
        item = f"item {where} " if where else ""
        raise PydanticCustomError("number_not_bool", f"{item}must be {kind}, not true/false",
                                  {"item": where, "kind": kind})


class Section(NumbersNotBools):
    """A config section. `extra="forbid"` turns a typo into an error that suggests the nearest valid key."""

    # allow_inf_nan=False: `algorithm.beta=inf` or a NaN weight would pass a `ge=0` bound and wreck the run hours in.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=False,
                              allow_inf_nan=False)
