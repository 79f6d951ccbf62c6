"""The one exception type for mistakes a user can fix.

A `UserError` carries a single line that names the problem and what to do about it. The command line prints
that line and exits non-zero without a traceback; every other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input (config, model, corpus, paths), stated in one actionable line."""


class RunError(Exception):
    """A run that could not finish for a reason outside the user's input (a shard failing every retry, no actor
    placeable). Also one line; finished shards stay in the run directory for the next attempt."""


def first_line(exc: BaseException) -> str:
    """`Type: message` on one line (the last line of a multi-line message, where Ray puts the cause)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"
