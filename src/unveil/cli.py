"""The ``unveil`` command line: one entry point, thin sub-commands.

Each sub-command lives in ``unveil.commands.<name>`` and provides ``register(subparsers)``
which adds its parser and sets ``func`` (a callable taking the parsed namespace and
returning an exit status).  Command modules import heavy libraries inside ``func`` so that
``unveil --help`` stays fast.  User errors (:class:`unveil.errors.UnveilError`) become one
line on stderr and exit status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Iterator, Sequence

from unveil import __version__
from unveil.errors import UnveilError, describe_os_error, describe_write_failure

# Order is the order shown in ``unveil --help``.
COMMANDS = (
    "demo",
    "check",
    "phantom",
    "plant",
    "lungmask",
    "prompts",
    "train",
    "inspect",
    "generate",
    "counterfactual",
    "analyze",
    "report",
    "evaluate",
    "compare",
)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the sentence and where to look, no usage block."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'.\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="unveil",
        description=(
            "Train 3D generative models of CT conditioned on masks and clinical text, and "
            "measure what each clinical attribute changes in the image."
        ),
    )
    parser.add_argument("--version", action="version", version=f"unveil {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show full tracebacks instead of one-line errors"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        modname = f"unveil.commands.{name}"
        if importlib.util.find_spec(modname) is None:
            continue  # command not part of this build
        importlib.import_module(modname).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 user error, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(levelname)s: %(message)s"
        if not args.debug
        else "%(asctime)s %(name)s %(levelname)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    out = _out_hint(args)
    try:
        with _locked(args):
            return int(args.func(args) or 0)
    except UnveilError as err:
        if args.debug:
            raise
        return _fail(args, str(err), err.exit_code)
    except OSError as err:
        # Full disk, read-only mount, permissions: one mapping for every command.
        if args.debug:
            raise
        return _fail(args, describe_os_error(err, out))
    except MemoryError:
        if args.debug:
            raise
        return _fail(
            args,
            "ran out of memory; make the job smaller (fewer or smaller volumes: --n, --size, "
            "train.batch_size, preprocess.patch_size) or use a machine with more memory.",
        )
    except RuntimeError as err:
        sentence = None if args.debug else describe_write_failure(err, out)
        if sentence is None:
            raise
        return _fail(args, sentence)
    except KeyboardInterrupt:
        print(
            f"unveil {args.command}: interrupted; outputs written so far are complete files.",
            file=sys.stderr,
        )
        return 130


def _fail(args: argparse.Namespace, sentence: str, code: int = 2) -> int:
    print(f"unveil {args.command}: error: {sentence}", file=sys.stderr)
    return code


def _out_hint(args: argparse.Namespace) -> str | None:
    for name in ("out", "run"):
        value = getattr(args, name, None)
        if isinstance(value, str) and value:
            return value
    return None


@contextlib.contextmanager
def _locked(args: argparse.Namespace) -> Iterator[None]:
    """Hold the output folder's lock while the command runs (commands set ``lock_folder``).

    Under ``torchrun`` every rank runs the same command on the same folder: only global
    rank 0 takes the lock, the other ranks are part of its job.
    """
    pick = getattr(args, "lock_folder", None)
    folder = pick(args) if pick else None
    if folder is None or os.environ.get("RANK", "0") != "0":
        yield
        return
    # lazy: unveil.fs brings json and tempfile, which `unveil --help` does not need (~4 ms)
    from unveil.fs import FolderBusy, folder_lock

    try:
        with folder_lock(folder, f"unveil {args.command}"):
            yield
    except FolderBusy as busy:
        raise UnveilError(
            f"{busy.path} is in use by {busy.holder}; wait for that command to finish or "
            "choose another output folder."
        ) from None


if __name__ == "__main__":
    sys.exit(main())
