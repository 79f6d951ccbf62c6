"""The one exception type for mistakes a user can fix.

A `UserError` carries a single line that names the problem and what to do about it. The command line prints
that line and exits non-zero without a traceback; every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (config, model, corpus, paths), stated in one actionable line."""


class RunError(Exception):
    """A run that could not finish for a reason outside the user's input (a shard failing every retry, no actor
    placeable). Also one line; finished shards stay in the run directory for the next attempt."""


def user_error(exc: BaseException) -> UserError | None:
    """The UserError raised inside a Ray task or actor, if that is what `exc` carries."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, UserError) else None


def first_line(exc: BaseException) -> str:
    """`Type: message` on one line (the last line of a multi-line message, where Ray puts the cause)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"


def os_failure(exc: BaseException) -> RunError | None:
    """A one-line RunError for an OSError (disk full, lost mount, permissions), raised in this process or inside a
    Ray task or actor (a `RayTaskError` whose `cause` is one); None for anything else."""
    cause = exc
    while isinstance(getattr(cause, "cause", None), BaseException) and cause is not cause.cause:  # Ray's wrappers
        cause = cause.cause
    if not isinstance(cause, OSError):
        return None
    text = str(cause).strip().splitlines()
    return RunError(f"{type(cause).__name__}: {text[-1] if text else ''}; free space or fix the storage, then rerun "
                    "the same command: finished shards are kept and resume")
