"""`mmrl build-data BUILDER ...`: the command line of the dataset builders registered in `data_pipelines.registry`.

The command line only collects what was given; the builder's one argument schema checks it
(`data_pipelines.builder_args.check_args`), exactly as it checks a pipeline step's `args`, so a mistyped flag or a
wrong type is the same one-line error (exit code 2) from both.

`register_builder`, `Builder`, `BUILDERS` and `BUILDER_MODULES` are re-exported from there for builder modules that
import them from here.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from data_pipelines.builder_args import CollectingParser, check_args, collecting, raw_from_namespace
from data_pipelines.registry import BUILDER_MODULES, BUILDERS, OUTPUT_FIELDS, Builder, load_builders, register_builder
from mmrl.commands import add_command
from mmrl.errors import UserError

__all__ = ["BUILDER_MODULES", "BUILDERS", "Builder", "register_builder", "register"]

EXAMPLES = """  mmrl build-data synthetic --tasks color,count --n 1000 --eval-n 200 --seed 0 --out data/synthetic
  mmrl build-data curriculum runs/quickstart/data/train.jsonl data/quickstart_curriculum
  mmrl build-data recipes                          # data/: the data of every recipe's offline line
"""


def _checked(name: str, builder: Builder) -> Callable[[argparse.Namespace], int | None]:
    """The builder's run behind its schema check and a writable-output check."""

    def checked(given: argparse.Namespace) -> int | None:
        from mmrl.runs.directory import check_output_dir

        where = ""  # the CLI prefixes "mmrl build-data: error:"; the message names the builder and the field
        args = check_args(
            name, builder.add_arguments, raw_from_namespace(name, builder.add_arguments, given, where), where
        )
        for field in OUTPUT_FIELDS:  # checked writable before the builder starts
            value = getattr(args, field, None)
            if isinstance(value, str) and value:
                check_output_dir(value, "--" + field.replace("_", "-") if field == "out" else field.upper())
        if builder.writes is not None:
            _claim_folders(builder.writes(args), bool(getattr(given, "overwrite", False)))
        return builder.run(args)

    return checked


def _claim_folders(folders: dict[Path, tuple[str, ...]], overwrite: bool) -> None:
    """Refuse output folders that already hold files (as a run directory is refused), or with --overwrite remove
    what the builder writes there: a smaller rebuild over a larger one would leave the old images behind."""
    used = [folder for folder in folders if folder.is_dir() and any(folder.iterdir())]
    if not used:
        return
    if not overwrite:
        names = ", ".join(str(folder) for folder in used)
        raise UserError(
            f"--out: {names} already {'holds' if len(used) == 1 else 'hold'} data; give another --out, "
            "or replace it with --overwrite"
        )
    for folder in used:
        names = folders[folder]
        targets = list(folder.iterdir()) if "*" in names else [folder / name for name in names]
        for target in targets:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
        print(f"--overwrite: removed the earlier data in {folder}", file=sys.stderr)


def register(subparsers, name: str) -> None:
    builders = load_builders().items()
    parser = add_command(
        subparsers,
        name,
        "build synthetic, curriculum or cold-start datasets",
        "Offline dataset builders; each writes JSONL that `mmrl data show` reads.",
        EXAMPLES,
    )
    sub = parser.add_subparsers(
        dest="builder", metavar="{" + ",".join(n for n, _ in builders) + "}", parser_class=CollectingParser
    )
    for builder_name, builder in builders:
        p = sub.add_parser(
            builder_name,
            help=builder.help,
            description=builder.help,
            epilog=builder.examples,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            allow_abbrev=False,
        )
        builder.add_arguments(p)
        collecting(p)
        if builder.writes is not None:  # the command line's own: a pipeline step owns its directory
            p.add_argument(
                "--overwrite",
                action="store_true",
                help="replace the data an earlier build left in the output folder (refused without it)",
            )
        p.set_defaults(func=_checked(builder_name, builder))

    def missing(args: argparse.Namespace) -> int:
        raise UserError(f"name a builder: {', '.join(n for n, _ in builders)}")

    parser.set_defaults(func=missing)
