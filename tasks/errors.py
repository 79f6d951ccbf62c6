"""The one exception type for mistakes a user can fix.

A `UserError` carries a single line that names the problem and what to do about it. The command line prints
that line and exits non-zero without a traceback; every other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input (config, model, corpus, paths), stated in one actionable line."""
