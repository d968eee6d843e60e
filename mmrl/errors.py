"""User-facing errors: one line that names the file, field or record and says what to do.

The CLI prints a `UserError` as a single line on stderr and exits with code 2 (no traceback unless `--debug`).
Anything else that escapes is a bug in mmrl and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input (config, data, path) that the user can fix.

    >>> str(UserError("configs/x.yaml: rollout.group_size must be >= 2 (got 1)"))
    'configs/x.yaml: rollout.group_size must be >= 2 (got 1)'
    """

    exit_code = 2


class ConfigError(UserError):
    """A config file or override that cannot be loaded or does not validate."""


class DataError(UserError):
    """A dataset, record or image that cannot be used as it is."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler ending the job, `kill PID`): handled exactly like Ctrl-C (exit status 143). Defined here,
    not in the command-line module, so that code raising it and `mmrl.cli` (also run as `python -m mmrl.cli`, where it
    is `__main__`) share one class."""
