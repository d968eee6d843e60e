"""One module per `mmrl` subcommand; each exposes `register(subparsers, name)` and sets `func` on its parser."""

from __future__ import annotations

import argparse

from mmrl.errors import UserError


def add_command(subparsers, name: str, help: str, description: str, examples: str) -> argparse.ArgumentParser:
    """Add a subcommand parser with a description and an examples epilog (shown by `--help`)."""
    return subparsers.add_parser(
        name,
        help=help,
        description=description,
        epilog="examples:\n" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def register_unavailable(subparsers, name: str, help: str, issue: str) -> None:
    """Register a command that a later issue will provide: it says so plainly and exits non-zero."""

    def run(args: argparse.Namespace) -> int:
        raise UserError(f"`mmrl {name}` is not available yet in this version ({issue}).")

    parser = add_command(subparsers, name, help + " (not available yet)", help + ".", f"  mmrl {name} --help\n")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)
