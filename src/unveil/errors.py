"""The one exception type that reaches the user as a sentence.

Library code raises :class:`UnveilError` for anything the user can fix (a bad file, a bad
config key, a missing column).  The CLI prints ``str(err)`` as one line and exits with
status 2; a traceback is shown only with ``--debug``.  Programming errors keep their
normal exception types so they are never disguised as input problems.
"""

from __future__ import annotations

import errno


class UnveilError(Exception):
    """A problem with the user's input, worded as one sentence: what, where, how to fix."""

    exit_code = 2


class ConfigError(UnveilError):
    """A configuration file or override that does not validate."""


class DataError(UnveilError):
    """A cohort, volume or table that cannot be used as it is."""


class CheckpointError(UnveilError):
    """A checkpoint that is corrupt, foreign, or made for another setup."""


def describe_os_error(err: OSError, out: str | None = None) -> str:
    """One sentence for an operating-system error: what failed, on which file, and the fix.

    Every command's output goes through this one mapping (in :func:`unveil.cli.main`), so a
    full disk, a read-only mount or a permission problem reads the same everywhere.  ``out``
    is the command's output path, named when the error carries no file name (a write that
    fails half-way through a file often does not).
    """
    where = err.filename or out
    name = f" {where}" if where else ""
    code = err.errno
    if code in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", -1)):
        return (
            f"the file system refused the write of{name or ' the output'} ({err.strerror or 'no space'}"
            "); free space or write elsewhere with --out, then rerun (a training run continues "
            "with --resume); nothing half-written was kept."
        )
    if code == errno.EROFS:
        return (
            f"cannot write{name}: the file system is read-only; choose an --out on a writable disk."
        )
    if code in (errno.EACCES, errno.EPERM):
        return (
            f"permission denied for{name}; choose an --out you can write to or fix its permissions."
        )
    if code == errno.ENOENT:
        return f"{where or 'a file'} does not exist; check the path."
    if code == errno.EISDIR:
        return f"{where or 'the path'} is a folder where a file was expected; give a file name."
    if code == errno.ENOTDIR:
        return f"a part of {where or 'the path'} is a file where a folder was expected; check the path."
    if code == errno.EMFILE:
        return "too many open files; raise the limit (ulimit -n) or use fewer data-loader workers."
    reason = err.strerror or str(err) or type(err).__name__
    return f"operating-system error on{name or ' a file'}: {reason}; check the path and the disk."


def describe_write_failure(err: RuntimeError, out: str | None = None) -> str | None:
    """The sentence for PyTorch's checkpoint writer failing (it raises ``RuntimeError``).

    ``torch.save`` reports a full or vanished disk as ``RuntimeError: [enforce fail at
    inline_container.cc] ... PytorchStreamWriter failed writing file``; anything else is a
    programming error and returns ``None`` so it keeps its traceback.
    """
    text = str(err)
    if "PytorchStreamWriter" not in text and "inline_container" not in text:
        return None
    where = f" under {out}" if out else ""
    return (
        f"could not write a checkpoint{where}: the PyTorch writer failed (usually a full or "
        "read-only disk); free space, then rerun with --resume (the partial file was not kept)."
    )
