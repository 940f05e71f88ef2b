"""The ``unveil`` command line: one entry point, thin sub-commands.

Each sub-command lives in ``unveil.commands.<name>`` and provides ``register(subparsers)``
which adds its parser and sets ``func`` (a callable taking the parsed namespace and
returning an exit status).  Command modules import heavy libraries inside ``func`` so that
``unveil --help`` stays fast.  User errors (:class:`unveil.errors.UnveilError`) become one
line on stderr and exit status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
from collections.abc import Sequence

from unveil import __version__
from unveil.errors import UnveilError

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    try:
        return int(args.func(args) or 0)
    except UnveilError as err:
        if args.debug:
            raise
        print(f"unveil {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(
            f"unveil {args.command}: interrupted; outputs written so far are complete files.",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
