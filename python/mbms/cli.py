"""The ``mbms`` command line.

Each subcommand lives in ``mbms.commands.<name>`` and exposes ``register(subparsers)``;
the module is imported only when listed here, so one broken gateway cannot break the CLI.

This module owns what every command shares: the logging options (``-v``, ``--log-level``,
``--log-format``) and the exit codes (:class:`mbms.errors.ExitCode`). A user-facing error is one
line on stderr, ``mbms COMMAND: error: ...``, never a traceback; only a bug (exit 4) prints one.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import mbms
import mbms.errors
from mbms.errors import EnvironmentProblem, ExitCode
from mbms.logs import LOG_FORMATS, active_format, set_cli_logging

# Subcommand modules, in the order ``mbms --help`` shows them.
COMMANDS: tuple[str, ...] = ("sim", "node", "monitor", "sunspec", "plant", "demo", "bench", "campaign", "keys",
                             "log")

#: What exit code 1 means for each command (0, 2, 3 and 4 mean the same everywhere).
FAILED_CHECK: dict[str, str] = {
    "sim": "a safety invariant (S1-S7) was violated",
    "campaign": "a run violated a safety invariant or failed (listed with the command that reproduces it)",
    "node": "not used (a node opens its contactors on a fault and keeps running)",
    "monitor": "--once: a configured member was never seen",
    "sunspec": "not used",
    "plant": "not used",
    "demo": "not used",
    "bench": "bench consensus: a schedule violated a safety rule",
    "keys": "not used",
    "log": "log decode --system: a message failed verification (bad tag, unauthenticated or replay)",
}


def exit_codes_text(command: str | None = None) -> str:
    one = FAILED_CHECK[command] if command else "the run found a violation (see each command's --help)"
    return (
        "exit codes:\n"
        f"  0  ok\n"
        f"  1  {one}\n"
        f"  2  usage or configuration error (names the file, field and what was expected)\n"
        f"  3  environment: no CAN interface, permission denied, port in use, peer or broker\n"
        f"     unreachable, a missing optional package\n"
        f"  4  internal error (a bug: the traceback is printed)\n"
        f"  130 interrupted (Ctrl-C)"
    )


def data_file(resolve: Callable[[str], Path]) -> Callable[[str], Path]:
    """An argparse ``type``: a path, or the name of a shipped file (:mod:`mbms.paths`); a name found
    nowhere is a usage error (exit 2) that says where it looked."""

    def parse(text: str) -> Path:
        try:
            return resolve(text)
        except mbms.errors.ConfigError as exc:
            raise argparse.ArgumentTypeError(exc.message) from None

    parse.__name__ = resolve.__name__
    return parse


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: ``mbms sim: error: ... (mbms sim --help)``, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def _add_logging_options(p: argparse.ArgumentParser, top: bool) -> None:
    # On subcommands the defaults are SUPPRESS, so ``mbms -v node ...`` is not reset by the
    # subparser's own default (argparse writes subparser defaults over the parent's values).
    d: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    g = p.add_argument_group("logging")
    g.add_argument("-v", "--verbose", action="count", help="more log output (-v: debug)",
                   **({"default": 0} if top else d))
    g.add_argument("--log-level", choices=["debug", "info", "warning", "error"], type=str.lower,
                   help="log level (default: the config's, else info)", **d)
    g.add_argument("--log-format", choices=LOG_FORMATS,
                   help="human lines or JSON lines, one object per record (default: the config's, else human)",
                   **d)


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser below ``parser`` (subcommands and their targets, e.g. ``bench core``)."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sp in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                out.append(sp)
                out.extend(_subparsers(sp))
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="mbms",
        description="Multi-master battery management system for parallel strings.",
        epilog=exit_codes_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mbms {mbms.__version__}")
    _add_logging_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"mbms.commands.{name}")
        module.register(sub)
    for name, sp in sub.choices.items():
        for p in [sp, *_subparsers(sp)]:
            _add_logging_options(p, top=False)
            p.epilog = "\n\n".join(x for x in (p.epilog, exit_codes_text(name)) if x)
            p.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _environment(exc: BaseException) -> EnvironmentProblem | None:
    """An environment problem that escaped as a library exception, else None."""
    if isinstance(exc, OSError) and exc.errno == errno.EINVAL:
        return None  # an invalid argument is a bug or a config slip, not the machine
    if isinstance(exc, OSError) and exc.filename:
        what = str(exc.filename)
    else:
        what = "CAN bus" if type(exc).__module__.startswith("can") else "system call"
    env = mbms.errors.environment_problem(what, exc)
    if env is None and isinstance(exc, ModuleNotFoundError) and exc.name and exc.name.partition(".")[0] != "mbms":
        env = EnvironmentProblem(f"python package {exc.name!r}", "not installed",
                                 "reinstall mbms with its dependencies (pip install mbms)")
    return env


def _report(prog: str, message: str, code: ExitCode, json_logs: bool) -> int:
    """The one line a failed command leaves on stderr (a JSON object with ``--log-format json``)."""
    if json_logs:
        print(json.dumps({"level": "error", "logger": "mbms.cli", "msg": message, "command": prog,
                          "exit_code": int(code)}, separators=(",", ":")), file=sys.stderr)
    else:
        print(f"{prog}: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = args.log_level or ("debug" if args.verbose else None)
    set_cli_logging(level, args.log_format)
    if not getattr(args, "func", None):
        parser.print_help()
        return ExitCode.USAGE
    prog = f"mbms {args.command}"
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except BaseException as exc:  # noqa: BLE001 - every error leaves here as one line and a code
        if isinstance(exc, SystemExit):
            raise
        json_logs = active_format() == "json"  # the command line's or the config's choice
        env = _environment(exc)
        if env is not None:
            logging.getLogger("mbms").debug("environment problem", exc_info=exc)  # the traceback on -v
            return _report(prog, _one_line(env), ExitCode.ENVIRONMENT, json_logs)
        if isinstance(exc, mbms.errors.MbmsError):  # typed, user-facing errors: one line, no traceback
            return _report(prog, _one_line(exc), ExitCode.USAGE, json_logs)
        traceback.print_exc()
        print(f"{prog}: internal error (a bug in mbms, please report it with the traceback above): "
              f"{type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return ExitCode.INTERNAL


if __name__ == "__main__":
    raise SystemExit(main())
