"""The `mmrl` command line: parse arguments, load the config, call one function.

Each subcommand lives in `mmrl/commands/<name>.py` and exposes `register(subparsers)`; this file only wires them up
and turns a `UserError` into one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import importlib
import os
import select
import signal
import sys

from mmrl.errors import Terminated, UserError

# Subcommand name -> module in mmrl.commands. Order is the order shown in `mmrl --help`.
COMMANDS: dict[str, str] = {
    "train": "train",
    "sft": "sft",
    "eval": "evaluate",
    "pipeline": "pipeline",
    "data": "data",
    "build-data": "build_data",
    "reward": "reward",
    "config": "config",
    "model": "model",
    "export": "export",
    "demo": "demo",
    "plot": "plot",
    "serve": "serve",
}

EPILOG = """examples:
  mmrl config show configs/quickstart.yaml trainer.max_steps=10
  mmrl model build-tiny /tmp/tiny --preset tiny
  mmrl train configs/tests/grpo_tiny.yaml data.train=runs/quickstart/data/train.jsonl trainer.max_steps=4 \\
      trainer.output_dir=runs/grpo_colors
  mmrl pipeline configs/quickstart.yaml

Run `mmrl COMMAND --help` for the options of one command.
"""


class OneLineParser(argparse.ArgumentParser):
    """argparse's complaints in one line naming the command (its own prints the usage block first): the subcommands'
    parsers are of this class too, since argparse gives a subparser its parent's class."""

    def error(self, message: str):  # noqa: ANN201 - argparse expects it not to return
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="mmrl",
        description="mmrl: cold-start data, SFT, GRPO, rewards, evaluation and demos for vision-language models.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for user errors too")
    parser.add_argument("--verbose", action="store_true", help="let libraries (transformers, torch...) log and warn")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"mmrl.commands.{module_name}")
        module.register(sub, name)
    return parser


# File-system errors that are the user's to fix (a full disk, a read-only or foreign directory): one line, exit 2.
USER_FS_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EEXIST,
    errno.ENOENT,
}


def _on_sigterm(_signum: int, _frame: object) -> None:
    raise Terminated()


def _resume_hint() -> str:
    """Which checkpoint an interrupted run continues from (empty when no run directory was claimed)."""
    from mmrl.runs.directory import last_claimed

    run_dir = last_claimed()
    if run_dir is None:
        return ""
    from mmrl.checkpoints.store import find_latest

    latest = find_latest(run_dir)
    if latest is None:
        return f"; no checkpoint was saved in {run_dir} yet (re-running with trainer.resume=auto starts fresh)"
    return f"; continue from {latest} with trainer.resume=auto"


def main(argv: list[str] | None = None) -> int:
    """The `mmrl` command; its exit status. A process of a multi-process launch ends here (see `exit_process`)."""
    try:
        code = _run_command(argv)
    except BaseException as err:
        ending = sys.modules.get("mmrl.parallel.process_exit")
        if ending is None or not ending.ends_this_process():
            raise
        # an error of mmrl's own (or any error with --debug), a SystemExit (a user reward's sys.exit) or another
        # BaseException in a launched process: what Python would print and its status, then the same exit as every
        # other ending (finalization could abort it with SIGABRT)
        code = _uncaught(err)
    ending = sys.modules.get("mmrl.parallel.process_exit")  # not imported: this process joined no group
    return code if ending is None else ending.exit_process(code)


def _uncaught(err: BaseException) -> int:
    """Report `err` as Python reports an exception that ends the program; the exit status Python gives."""
    if isinstance(err, SystemExit) and (err.code is None or isinstance(err.code, int)):
        return err.code or 0
    try:
        if sys.stderr is None:  # started with stderr closed: Python prints nothing either
            pass
        elif isinstance(err, SystemExit):  # sys.exit("message")
            print(err.code, file=sys.stderr)
        else:
            sys.excepthook(type(err), err, err.__traceback__)
    except Exception:  # noqa: BLE001 - stderr is a closed pipe: nothing can be shown, the status still counts
        pass
    return 130 if isinstance(err, KeyboardInterrupt) else 1


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reading end was closed (poll reports an error on it): a BrokenPipeError from
    anything else (a socket, a worker's pipe) keeps its traceback."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no stdout, not a real file, or no poll on this platform
        return False


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """`parser.parse_args`, except that `key=value` overrides may also follow an option: argparse fills the
    `overrides` list once, so `mmrl pipeline CONFIG --plan seeds=[0]` stopped with "unrecognized arguments"."""
    args, extra = parser.parse_known_args(argv)
    if (
        extra
        and isinstance(getattr(args, "overrides", None), list)
        and all("=" in text and not text.startswith("-") for text in extra)
    ):
        args.overrides.extend(extra)  # they came after the ones before the option: the order is kept
    elif extra:
        command = _command_parser(parser, argv)
        command.error(f"unrecognized arguments: {' '.join(extra)}{_did_you_mean(command, extra)}")
    return args


def _command_parser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The (sub)command parser the words of `argv` lead to (`mmrl eval`, `mmrl data show`): argparse reports an
    unknown option from the top parser, as `mmrl: error`, which sends the reader to the wrong --help."""
    for word in argv:
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if subparsers and word in subparsers[0].choices:
            parser = subparsers[0].choices[word]
    return parser


def _did_you_mean(parser: argparse.ArgumentParser, extra: list[str]) -> str:
    """` (did you mean '--model'?)` for the first mistyped option that is close to one of the command's."""
    options = [o for action in parser._actions for o in action.option_strings]
    for word in extra:
        if word.startswith("--"):
            close = difflib.get_close_matches(word.split("=")[0], options, n=1)
            if close:
                return f" (did you mean '{close[0]}'?)"
    return ""


def _run_command(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `--debug` is accepted anywhere on the line, not only before the subcommand.
    debug_flag = "--debug" in argv
    verbose = "--verbose" in argv or os.environ.get("MMRL_VERBOSE") == "1"
    argv = [a for a in argv if a not in ("--debug", "--verbose")]
    # Library chatter (progress bars, hub retries, deprecation notes) would bury mmrl's own bars and one-line errors.
    from mmrl.console import quiet_libraries

    quiet_libraries(verbose)
    parser = build_parser()
    args = _parse(parser, argv)
    if args.command is None:
        parser.print_help()
        return 2
    debug = debug_flag or args.debug or os.environ.get("MMRL_DEBUG") == "1"
    try:
        previous_handler = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (an embedding application): leave its signals alone
        previous_handler = None
    try:
        result = args.func(args)
        if sys.stdout is not None:  # a reader gone (`mmrl ... | head`) is met here, not at interpreter exit
            sys.stdout.flush()
    except UserError as err:
        if debug:
            raise
        print(f"mmrl {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt as err:
        how = "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted"
        print(f"mmrl {args.command}: {how}{_resume_hint()}", file=sys.stderr)
        return 143 if isinstance(err, Terminated) else 130
    except BrokenPipeError:
        if debug or not _stdout_reader_gone():
            raise
        # `mmrl pipeline CONFIG --plan | head`: the reader has what it wanted; end as `cat` does there, no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the final flush has nowhere to fail
        return 141
    except OSError as err:
        if debug or err.errno not in USER_FS_ERRNOS:
            raise
        where = f"{err.filename}: " if err.filename else ""
        print(
            f"mmrl {args.command}: error: {where}{err.strerror or err}; check the path, its permissions and the "
            "free space",
            file=sys.stderr,
        )
        return 2
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
        from mmrl.runs.directory import release_all

        release_all()
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
