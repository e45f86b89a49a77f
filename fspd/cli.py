"""Command line: ``fspd COMMAND``. Each command group lives in its own module and registers
itself through ``register(subparsers)``; this module only dispatches and maps errors to exit codes.

Registering is cheap: a command module imports what its commands need (pydantic, botocore,
aiohttp, uvloop, ...) inside their handlers, so ``fspd --help`` and ``fspd status`` load none
of it (tests/cli/test_cli_startup_imports.py checks which modules a command loads).

Global options (``--log-level``, ``--log-json``, ``-v``, ``-q``) are accepted before and after
the command. With ``--json``, a failure prints ``{"error", "field", "message", "exit_code"}``
on stdout as well as the one-line message on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from fspd import __version__, log
from fspd.display import printable
from fspd.errors import BadInput, Cancelled, FspdError

# Modules that contribute subcommands, in the order they appear in --help.
COMMAND_MODULES = (
    "fspd.commands.transfer",
    "fspd.commands.archive",
    "fspd.commands.daemon",
    "fspd.commands.fleet",
    "fspd.commands.ui",
    "fspd.commands.analyze",
    "fspd.commands.completion",
    "fspd.emulator.cli",
)
LOG_LEVELS = ["debug", "info", "warning", "error"]


class UsageError(BadInput):
    """argparse's complaint about the command line, raised instead of exiting so that
    ``--json`` can report it like any other bad input."""

    def __init__(self, message: str, parser: argparse.ArgumentParser) -> None:
        super().__init__(message, field=_usage_field(message))
        self.bare = message
        self.parser = parser

    def to_dict(self) -> dict[str, str | None]:
        return {"error": "BadInput", "field": self.field, "message": self.bare}


def _usage_field(message: str) -> str | None:
    """The argument an argparse message is about: ``argument -d/--destination-region: …``,
    ``the following arguments are required: a, b``, ``unrecognized arguments: --x``."""
    if m := re.match(r"argument ([^:]+):", message):
        return m.group(1).split("/")[-1]
    if m := re.match(r"(?:the following arguments are required|unrecognized arguments): "
                     r"([^\s,]+)", message):
        return m.group(1)
    return None


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self)


def add_global_options(p: argparse.ArgumentParser) -> None:
    """The options every command takes, before or after its name. Defaults are resolved in
    :func:`main` (``SUPPRESS`` here, so a value given after the command is not overwritten by
    the top-level parser's default, nor the other way round)."""
    g = p.add_argument_group("global options (before or after the command)")
    g.add_argument("--log-level", choices=LOG_LEVELS, default=argparse.SUPPRESS,
                   help="log level (default: info; overrides -v and -q)")
    g.add_argument("--log-json", action=argparse.BooleanOptionalAction,
                   default=argparse.SUPPRESS,
                   help="JSON log lines (default: JSON unless stderr is a terminal)")
    g.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="debug logs (same as --log-level debug)")
    g.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                   help="warnings and errors only: no progress display, no summary")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="fspd",
        description="Move EBS snapshots between EBS Direct, files, block devices, regions, "
        "accounts and S3.",
    )
    parser.add_argument("--version", action="version", version=f"fspd {__version__}")
    add_global_options(parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                       help="what to do (fspd COMMAND --help for its options)")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    for sub in subparsers.choices.values():
        add_global_options(sub)
    return parser


def _resolve_globals(args: argparse.Namespace) -> None:
    """Fill in the global options' defaults: ``--log-level`` if given, else debug for -v,
    warning for -q, else info."""
    verbose, quiet = getattr(args, "verbose", False), getattr(args, "quiet", False)
    if verbose and quiet:
        raise BadInput("give one of -v/--verbose and -q/--quiet, not both", field="--quiet")
    args.log_level_given = hasattr(args, "log_level")
    if not args.log_level_given:
        args.log_level = "debug" if verbose else "warning" if quiet else "info"
    args.log_json = getattr(args, "log_json", None)
    args.verbose, args.quiet = verbose, quiet


def _report(exc: FspdError, as_json: bool) -> int:
    """The one-line message on stderr (argparse's usage and message for a usage error);
    with ``--json`` also the error object on stdout. Returns the exit code."""
    code = int(exc.exit_code)
    if isinstance(exc, UsageError):
        exc.parser.print_usage(sys.stderr)
        print(f"{exc.parser.prog}: error: {exc.bare}", file=sys.stderr)
    else:
        print("fspd: " + "\n".join(printable(line) for line in str(exc).split("\n")),
              file=sys.stderr)
    if as_json:
        details: dict[str, Any] = getattr(exc, "json_details", None) or {}
        print(json.dumps({**details, **exc.to_dict(), "exit_code": code}, default=str))
    return code


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in argv  # known before parsing, so a usage error is reported too
    try:
        parser = build_parser()
        if "_ARGCOMPLETE" in os.environ:  # TAB in a shell set up by `fspd completion`
            import argcomplete

            argcomplete.autocomplete(parser)  # prints the completions and exits
        args = parser.parse_args(argv)
        _resolve_globals(args)
        log.configure(args.log_level, json=args.log_json)
        if args.log_level == "debug":  # (asking for a logger loads structlog)
            log.get_logger("fspd.cli").debug("command_started", command=args.command,
                                             version=__version__, pid=os.getpid())
        return int(args.handler(args) or 0)
    except FspdError as exc:
        return _report(exc, as_json)
    except KeyboardInterrupt:
        return _report(Cancelled("interrupted"), as_json)
    except BrokenPipeError:
        # The reader went away (`fspd completion bash | head`): stop quietly, as a shell
        # tool does, with SIGPIPE's status; point stdout at /dev/null so the interpreter's
        # last flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13
