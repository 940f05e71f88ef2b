"""Atomic file-system writes.

Nothing a user made may be lost and no output may be half written: every file is written
to a temporary sibling and moved into place with :func:`os.replace`, which is atomic on
POSIX and Windows when source and target are on the same file system.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from unveil.errors import UnveilError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
    import msvcrt


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it onto ``path``.

    The temporary name keeps the final suffix (``.nii.gz`` etc.) so writers that infer the
    format from the name still work.  On any exception the temporary file is removed and
    ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes the file owner-only (0600); give it the mode a plain open() would.
    os.chmod(tmp_path, 0o666 & ~_umask())
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically write ``data`` to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON (keys in insertion order)."""
    return write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays, Paths and tuples appear in configs and results.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a whole output folder in a temporary sibling and rename it into place at the end.

    Used for outputs made of many files (a phantom cohort, a report) so a crash or Ctrl-C
    never leaves a folder that looks complete but is not.  An existing non-empty ``path``
    is only replaced when ``overwrite`` is true.
    """
    path = Path(path)
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise UnveilError(
            f"output folder {path} already exists and is not empty; choose another --out "
            "or remove it first."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class FolderBusy(Exception):
    """Raised by :func:`folder_lock` when another process holds the folder (carries the pid)."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is locked by {holder}")
        self.path = path
        self.holder = holder


def lock_path_for(folder: str | os.PathLike) -> Path:
    """The lock file of an output folder: a hidden sibling, so the folder itself stays clean.

    A sibling (not a file inside) lets commands that build their folder elsewhere and rename
    it into place (:func:`atomic_dir`) hold the lock for the whole run.
    """
    folder = Path(os.path.abspath(folder))
    return folder.parent / f".{folder.name}.unveil-lock"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, owner: str) -> Iterator[Path]:
    """Hold an exclusive operating-system lock on ``folder`` for the duration of the block.

    The lock is an advisory ``flock`` (``msvcrt.locking`` on Windows) on a hidden sibling
    file, so the kernel releases it when the process dies however it dies (kill -9
    included): a stale lock cannot exist.  The holder writes ``pid <n> (<owner>)`` into the
    file so a second writer can say who holds it.  The file is removed on release; the
    inode check after locking makes that removal race-free (a process that locked a file
    which was unlinked meanwhile retries on the new one).

    Raises:
        FolderBusy: another live process holds the lock.
    """
    path = lock_path_for(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            _try_lock(fd)
        except OSError:
            holder = _read_holder(path)
            os.close(fd)
            raise FolderBusy(Path(folder), holder) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed the file after we opened it: retry
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} ({owner})\n".encode())
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)  # closing releases the lock


def _try_lock(fd: int) -> None:
    if fcntl is None:  # Windows
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _read_holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        text = ""
    return text or "another process"
