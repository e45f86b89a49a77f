"""Command line: ``fspd COMMAND``. Each command group lives in its own module and registers
itself through ``register(subparsers)``; this module only dispatches and maps errors to exit codes.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from fspd import __version__, log
from fspd.display import printable
from fspd.errors import ExitCode, FspdError

# Modules that contribute subcommands, in the order they appear in --help.
COMMAND_MODULES = (
    "fspd.commands.transfer",
    "fspd.commands.archive",
    "fspd.commands.daemon",
    "fspd.emulator.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fspd",
        description="Move EBS snapshots between EBS Direct, files, block devices, regions, "
        "accounts and S3.",
    )
    parser.add_argument("--version", action="version", version=f"fspd {__version__}")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument(
        "--log-json", action=argparse.BooleanOptionalAction, default=None,
        help="JSON log lines (default: JSON unless stderr is a terminal)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    log.configure(args.log_level, json=args.log_json)
    try:
        return int(args.handler(args) or 0)
    except FspdError as exc:
        print("fspd: " + "\n".join(printable(line) for line in str(exc).split("\n")),
              file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("fspd: interrupted", file=sys.stderr)
        return int(ExitCode.CANCELLED)
