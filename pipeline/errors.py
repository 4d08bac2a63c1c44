"""Errors that end a run with one clear line and exit code 2 (bad config or bad input)."""

from __future__ import annotations

from typing import ClassVar


class UserError(Exception):
    """A problem the user can fix; printed as one line, exit code 2, no traceback."""

    exit_code = 2


class ConfigError(UserError):
    pass


class InputError(UserError):
    pass


class OutputError(UserError):
    """The output location cannot be written (permissions, full disk)."""


class UnsafePathError(OutputError, ValueError):
    """A path under OUT that would escape it (absolute, `..`): from a tampered record or manifest."""


class StageFailed(Exception):
    """A stage could not finish (e.g. a partition kept failing); exit code 1."""

    exit_code = 1


class ContractError(UserError):
    """A stage broke its declared contract: a column it needs, or promised to add, is missing."""


class DamagedInput(StageFailed, UserError):
    """A finished partition (or side file) whose bytes no longer match the checksum its completion record
    holds: bit rot, a bad disk or object store. Exit code 1 (StageFailed): the reader has already
    invalidated that record, so rerunning the same command recomputes it. A UserError too, so that a
    worker's failure ends the stage at once: a retry would read the same damaged bytes."""


class Terminated(KeyboardInterrupt):
    """The driver was told to stop (SIGTERM). A KeyboardInterrupt, so it unwinds like Ctrl-C: no `except
    Exception` swallows it and every finally runs (actors killed, lease released, log written). Ray turns a
    signal handler's exception inside its waits into a plain KeyboardInterrupt, so `received` keeps the
    signal's name for whoever catches that."""

    exit_code = 143
    received: ClassVar[str | None] = None
