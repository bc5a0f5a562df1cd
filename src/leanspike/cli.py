"""The ``leanspike`` command line: each subcommand lives in ``leanspike.commands.<name>``.

Errors a user can fix (bad arguments, missing files) are raised as :class:`UserError`
and printed as one line with exit status 2 — never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import UserError

#: subcommand name -> module in leanspike.commands (imported lazily, keeps start-up light)
COMMANDS = {
    "train": "train",
    "demo": "demo",
    "models": "models",
    "costs": "costs",
    "grad-sim": "grad_sim",
    "plan": "plan",
    "presets": "presets",
    "sweep": "sweep",
    "report": "report",
    "design-space": "design_space",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        raise UserError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="leanspike", description="Memory- and time-efficient SNN training.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, module in COMMANDS.items():
        importlib.import_module(f"leanspike.commands.{module}").add_parser(sub)
    return parser


def _one_line(exc: UserError) -> str:
    """The error's own line. A DataLoader worker re-raises a reader's error with the worker's
    traceback in its message ("Caught UserError in DataLoader worker process 0. Original
    Traceback ..."): its last line is the reader's message."""
    text = str(exc).strip()
    if "\nOriginal Traceback" in text:
        last = text.splitlines()[-1]
        return last.split(f"{UserError.__name__}: ", 1)[-1]
    return text


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return int(args.run(args) or 0)
    except UserError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path the OS refuses (permissions, a file where a folder must be, a full disk)
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
