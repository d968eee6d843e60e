"""`mmrl build-data BUILDER ...`: the command line of the dataset builders registered in `data_pipelines.registry`.

The command line only collects what was given; the builder's one argument schema checks it
(`data_pipelines.builder_args.check_args`), exactly as it checks a pipeline step's `args`, so a mistyped flag or a
wrong type is the same one-line error (exit code 2) from both.

`register_builder`, `Builder`, `BUILDERS` and `BUILDER_MODULES` are re-exported from there for builder modules that
import them from here.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from data_pipelines.builder_args import CollectingParser, check_args, collecting, raw_from_namespace
from data_pipelines.registry import BUILDER_MODULES, BUILDERS, OUTPUT_FIELDS, Builder, load_builders, register_builder
from mmrl.commands import add_command
from mmrl.errors import UserError

__all__ = ["BUILDER_MODULES", "BUILDERS", "Builder", "register_builder", "register"]

EXAMPLES = """  mmrl build-data synthetic --tasks color,count --n 1000 --eval-n 200 --seed 0 --out data/synthetic
  mmrl build-data curriculum data/synthetic/train.jsonl data/curriculum
  mmrl build-data recipes                          # data/: the data of every recipe's offline line
"""


def _checked(name: str, builder: Builder) -> Callable[[argparse.Namespace], int | None]:
    """The builder's run behind its schema check and a writable-output check."""

    def checked(given: argparse.Namespace) -> int | None:
        from mmrl.engine.run_dir import check_output_dir

        where = ""  # the CLI prefixes "mmrl build-data: error:"; the message names the builder and the field
        args = check_args(name, builder.add_arguments, raw_from_namespace(name, builder.add_arguments, given, where),
                          where)
        for field in OUTPUT_FIELDS:  # checked writable before the builder starts
            value = getattr(args, field, None)
            if isinstance(value, str) and value:
                check_output_dir(value, "--" + field.replace("_", "-") if field == "out" else field.upper())
        return builder.run(args)

    return checked


def register(subparsers, name: str) -> None:
    builders = load_builders().items()
    parser = add_command(subparsers, name, "build synthetic, curriculum or cold-start datasets",
                         "Offline dataset builders; each writes JSONL that `mmrl data show` reads.", EXAMPLES)
    sub = parser.add_subparsers(dest="builder", metavar="{" + ",".join(n for n, _ in builders) + "}",
                                parser_class=CollectingParser)
    for builder_name, builder in builders:
        p = sub.add_parser(builder_name, help=builder.help, description=builder.help, epilog=builder.examples,
                           formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
        builder.add_arguments(p)
        collecting(p)
        p.set_defaults(func=_checked(builder_name, builder))

    def missing(args: argparse.Namespace) -> int:
        raise UserError(f"name a builder: {', '.join(n for n, _ in builders)}")

    parser.set_defaults(func=missing)
