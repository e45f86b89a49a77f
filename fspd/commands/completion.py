"""``fspd completion SHELL``: the shell code that makes TAB complete fspd's commands and
options, through argcomplete (which runs ``fspd`` itself with the ``_ARGCOMPLETE`` protocol)."""

from __future__ import annotations

import argparse
from typing import Any

SHELLS = ("bash", "zsh", "fish")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "completion", help="print shell completion code (bash, zsh, fish)",
        description="Print the code that makes TAB complete fspd's commands and options. "
        'For bash, add  eval "$(fspd completion bash)"  to ~/.bashrc.')
    p.add_argument("shell", choices=SHELLS, help="the shell to print the code for")
    p.set_defaults(handler=_cmd_completion)


def _cmd_completion(args: argparse.Namespace) -> int:
    import argcomplete

    print(argcomplete.shellcode(["fspd"], shell=args.shell))
    return 0
