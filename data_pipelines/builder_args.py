"""A builder's arguments, checked once for both entry points: `mmrl build-data NAME --flag v` and a pipeline step
`{kind: build-data, args: {builder: NAME, field: v}}`.

A builder declares its arguments once, on an argparse parser (`add_arguments`). That declaration is the schema:
its `dest` names are the pipeline's field names (`--eval-n` on the command line is `eval_n` in a step), its `type`,
`choices`, `nargs`, `required` and `store_true` / `store_false` say what a value must be (plain `store` actions,
switches and positionals: the kinds of arguments builders declare). Both entry points first collect what the user
gave as {field: raw value} and then call `check_args`, so a typo or a wrong type gives the same one-line message:

>>> import argparse
>>> def schema(p):
...     p.add_argument("--n", type=int, default=8)
...     p.add_argument("--no-cot", action="store_true")
>>> check_args("demo", schema, {"n": "3", "no_cot": True}, "here")
Namespace(n=3, no_cot=True)
>>> check_args("demo", schema, {"nn": 3}, "here")
Traceback (most recent call last):
mmrl.errors.UserError: here: builder 'demo': unknown argument 'nn' (did you mean 'n'?); valid: n, no_cot
>>> check_args("demo", schema, {"n": "ten"}, "here")
Traceback (most recent call last):
mmrl.errors.UserError: here: builder 'demo': argument 'n' must be an integer (got 'ten')
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mmrl.errors import UserError

Schema = Callable[[argparse.ArgumentParser], None]
TYPE_NAMES = {int: "an integer", float: "a number", str: "a string"}


def schema_parser(schema: Schema, prog: str = "builder",
                  cls: type[argparse.ArgumentParser] = argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The builder's declared parser (help off: `-h` is not a field; no abbreviations: `--eval` is no field)."""
    parser = cls(prog=prog, add_help=False, allow_abbrev=False)
    schema(parser)
    return parser


def fields(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """{field name: its argparse action}, in declaration order."""
    return {a.dest: a for a in parser._actions if a.dest != argparse.SUPPRESS and a.dest != "help"}


def collecting(parser: argparse.ArgumentParser) -> None:
    """Make `parser` only collect raw strings: checking (types, choices, required) is `check_args`'s job, so the
    command line and a pipeline step fail with the same message. Choices stay visible in `--help` as the metavar."""
    for action in fields(parser).values():
        if action.choices is not None and action.metavar is None:
            action.metavar = "{" + ",".join(map(str, action.choices)) + "}"
        action.type, action.choices, action.required = None, None, False


def bounded(kind: type, low: float | None = None, high: float | None = None) -> Callable[[str], Any]:
    """An argparse `type` that also checks the range, so a value out of range is the same one-line error on the
    command line and in a pipeline step, and a step's is caught when the pipeline loads, before earlier steps run.

    >>> check_args("demo", lambda p: p.add_argument("--k", type=bounded(int, 1, 8)), {"k": 0}, "here")
    Traceback (most recent call last):
    mmrl.errors.UserError: here: builder 'demo': argument 'k' must be an integer from 1 to 8 (got '0')
    """

    def convert(text: str) -> Any:
        value = kind(text)
        if value != value or (low is not None and value < low) or (high is not None and value > high):
            raise ValueError(text)  # NaN fails too
        return value

    span = (f" from {low} to {high}" if high is not None else f" >= {low}") if low is not None else f" <= {high}"
    convert.__name__ = TYPE_NAMES[kind] + span
    return convert


class _ParseError(Exception):
    pass


class CollectingParser(argparse.ArgumentParser):
    """An argparse parser that keeps the words it does not know (in `namespace._unknown`) and its own complaints (in
    `namespace._parse_error`) instead of exiting: the builder reports them in one line with the valid field names."""

    def parse_known_args(self, args=None, namespace=None):  # noqa: ANN001 - argparse's own signature
        namespace = argparse.Namespace() if namespace is None else namespace
        extras: list[str] = []
        try:
            namespace, extras = super().parse_known_args(args, namespace)
        except _ParseError as err:  # raised after every word was read: `namespace` holds what was given
            if not str(err).startswith("the following arguments are required"):  # check_args says which, its way
                namespace._parse_error = str(err)
        namespace._unknown = list(getattr(namespace, "_unknown", [])) + list(extras)
        return namespace, []

    def error(self, message: str):  # noqa: ANN201 - argparse expects it not to return
        raise _ParseError(message)


def argv_to_raw(name: str, schema: Schema, argv: Sequence[str], where: str) -> dict[str, Any]:
    """{field: raw value} of a command line (`argv`), unknown words reported like an unknown field."""
    parser = schema_parser(schema, f"mmrl build-data {name}", CollectingParser)
    collecting(parser)
    namespace, _ = parser.parse_known_args(list(argv))
    return raw_from_namespace(name, schema, namespace, where)


def raw_from_namespace(name: str, schema: Schema, namespace: argparse.Namespace, where: str) -> dict[str, Any]:
    """The fields a collecting parser saw given (defaults dropped), after reporting its first unknown word."""
    unknown = getattr(namespace, "_unknown", [])
    if getattr(namespace, "_parse_error", None):
        raise UserError(f"{_at(where)}builder '{name}': {namespace._parse_error}; see `mmrl build-data {name} --help`")
    if unknown:
        word = next((w for w in unknown if w.startswith("-")), unknown[0])
        field = word.lstrip("-").split("=", 1)[0].replace("-", "_") if word.startswith("-") else None
        _unknown(name, schema, field, where, word)
    parser = schema_parser(schema)
    # A value equal to the default changes nothing whether it was typed or not; the rest was given.
    return {dest: getattr(namespace, dest) for dest, action in fields(parser).items()
            if hasattr(namespace, dest) and getattr(namespace, dest) != action.default}


def _at(where: str) -> str:
    return f"{where}: " if where else ""


def _unknown(name: str, schema: Schema, field: str | None, where: str, word: str = "") -> None:
    valid = list(fields(schema_parser(schema)))
    if field is None:
        raise UserError(f"{_at(where)}builder '{name}': unexpected value '{word}'; valid arguments: {', '.join(valid)}")
    close = difflib.get_close_matches(field, valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise UserError(f"{_at(where)}builder '{name}': unknown argument '{field}'{hint}; valid: {', '.join(valid)}")


def _shown(value: Any) -> str:
    """A value as the message quotes it: the same for `--n 1.5` on the command line and `n: 1.5` in YAML."""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return f"'{value}'"
    return repr(value)


def _convert(name: str, action: argparse.Action, value: Any, where: str) -> Any:
    field = f"{_at(where)}builder '{name}': argument '{action.dest}'"
    if action.nargs == 0:  # store_true / store_false: a switch
        if not isinstance(value, bool):
            raise UserError(f"{field} is a switch: true or false (got {_shown(value)})")
        return action.const if value else action.default
    many = action.nargs in ("*", "+") or isinstance(action.nargs, int)
    if many:
        items = value if isinstance(value, list) else [value]
        return [_one(field, action, v) for v in items]
    if isinstance(value, list) and action.type in (None, str):  # a list of names for a comma-separated field
        if not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value):
            raise UserError(f"{field} must be a name or a list of names (got {_shown(value)})")
        value = ",".join(str(v) for v in value)
    return _one(field, action, value)


def _one(field: str, action: argparse.Action, value: Any) -> Any:
    if isinstance(value, (dict, list, bool)) or value is None:
        wanted = TYPE_NAMES.get(action.type or str, getattr(action.type, "__name__", "a value"))
        raise UserError(f"{field} must be {wanted} (got {_shown(value)})")
    if action.type is not None:
        try:
            value = action.type(str(value))
        except (ValueError, TypeError, argparse.ArgumentTypeError):
            wanted = TYPE_NAMES.get(action.type, getattr(action.type, "__name__", "a valid value"))
            raise UserError(f"{field} must be {wanted} (got {_shown(value)})") from None
    else:
        value = str(value)
    if action.choices is not None and value not in action.choices:
        raise UserError(f"{field} must be one of {', '.join(map(str, action.choices))} (got {_shown(value)})")
    return value


def check_args(name: str, schema: Schema, raw: Mapping[str, Any], where: str,
               require: bool = True) -> argparse.Namespace:
    """The builder's Namespace from {field: raw value}: unknown fields, wrong types, bad choices and (with `require`)
    missing required fields are one-line `UserError`s naming `where`, the builder and the field."""
    declared = fields(schema_parser(schema))
    for key in raw:
        if key not in declared:
            _unknown(name, schema, str(key), where)
    values: dict[str, Any] = {}
    for dest, action in declared.items():
        if dest in raw:
            values[dest] = _convert(name, action, raw[dest], where)
            continue
        needed = action.required or (not action.option_strings and action.nargs in (None, "+"))
        if needed and require:
            flag = action.option_strings[0] if action.option_strings else f"the positional {dest.upper()}"
            raise UserError(f"{_at(where)}builder '{name}': argument '{dest}' is required ({flag} on the command line)")
        default = action.default
        if isinstance(default, str) and action.type is not None:
            default = action.type(default)  # argparse converts a string default the same way
        if default is None and action.nargs == "*" and not action.option_strings:
            default = []
        values[dest] = default
    return argparse.Namespace(**values)
