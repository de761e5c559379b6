"""The ``mbms`` command line.

Each subcommand lives in ``mbms.commands.<name>`` and exposes ``register(subparsers)``;
the module is imported only when listed here, so one broken gateway cannot break the CLI.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

import mbms
import mbms.errors

# Subcommand modules, in the order ``mbms --help`` shows them.
COMMANDS: tuple[str, ...] = ("sim", "node", "monitor", "plant", "demo", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mbms",
        description="Multi-master battery management system for parallel strings.",
    )
    parser.add_argument("--version", action="version", version=f"mbms {mbms.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"mbms.commands.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except mbms.errors.EnvironmentProblem as exc:  # the machine, not the file: exit code 3
        print(f"mbms {args.command}: error: {exc}", file=sys.stderr)
        return 3
    except mbms.errors.MbmsError as exc:  # typed, user-facing errors: one line, no traceback
        print(f"mbms {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
