"""The one exception type that reaches the user as a sentence.

Library code raises :class:`UnveilError` for anything the user can fix (a bad file, a bad
config key, a missing column).  The CLI prints ``str(err)`` as one line and exits with
status 2; a traceback is shown only with ``--debug``.  Programming errors keep their
normal exception types so they are never disguised as input problems.
"""

from __future__ import annotations


class UnveilError(Exception):
    """A problem with the user's input, worded as one sentence: what, where, how to fix."""

    exit_code = 2


class ConfigError(UnveilError):
    """A configuration file or override that does not validate."""


class DataError(UnveilError):
    """A cohort, volume or table that cannot be used as it is."""


class CheckpointError(UnveilError):
    """A checkpoint that is corrupt, foreign, or made for another setup."""
