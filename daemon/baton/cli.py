"""The `baton` command. Each subcommand lives in `baton.commands.<name>` and registers itself.

Operator commands talk only to the control API; `validate`, `plan`, `lab` and `demo` work offline.
Errors are one clear line on stderr and a meaningful exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from baton import __version__

# Exit codes (sysexits.h where one fits).
EX_OK = 0
EX_FAILURE = 1  # the command ran and what it reports is bad (a run failed, a check failed)
EX_USAGE = 64
EX_UNAVAILABLE = 69  # the daemon/API is not reachable
EX_SOFTWARE = 70
EX_CONFIG = 78  # inventory, config or playbook invalid

# Modules that define subcommands: each has `register(subparsers) -> None`, which adds its
# parser(s) with `set_defaults(func=callable(args) -> int)`.
COMMAND_MODULES: tuple[str, ...] = (
    "baton.commands.validate",
    "baton.commands.plan",
    "baton.commands.daemon",
    "baton.commands.lab",
    "baton.commands.operator",
    "baton.commands.demo",
    "baton.commands.replay",
    "baton.commands.completion",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="baton",
        description="Baton: hands a closed central office's network over to its alternate office.",
    )
    parser.add_argument("--version", action="version", version=f"baton {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EX_USAGE
    try:
        return int(func(args))
    except KeyboardInterrupt:
        print("baton: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `baton ... | head` closed our stdout: not worth a traceback. Point stdout at /dev/null
        # so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
