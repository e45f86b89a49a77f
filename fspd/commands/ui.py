"""``fspd ui``: where to open the daemon's web view (see fspd/daemon/ui.py)."""

from __future__ import annotations

import argparse
import json
import shlex
import socket
from typing import Any

from fspd.commands.daemon import socket_path

SSH_LOCAL_PORT = 8485


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "ui", help="where to open the daemon's live web view",
        description="Print the web view's URL when daemon.http_listen is set, else how to reach "
        "it over SSH (it is always served on the control socket at /ui/).")
    p.add_argument("--json", action="store_true", help="print JSON")
    g = p.add_argument_group("daemon")
    g.add_argument("--config", help="settings file (default: $FSPD_CONFIG or /etc/fspd/fspd.toml)")
    g.add_argument("--socket", help="control socket (default: daemon.socket_path, or "
                   "$FSPD_SOCKET)")
    p.set_defaults(handler=_cmd_ui)


def _cmd_ui(args: argparse.Namespace) -> int:
    from fspd import config  # here, not at the top: `fspd --help` loads no pydantic or aiohttp
    from fspd.daemon import ui

    settings = config.load(args.config)
    sock = socket_path(args)
    listen = settings.daemon.http_listen
    token_file = str(ui.token_path(settings.daemon.state_dir))
    if listen:
        url = ui.url_of(listen)
        if args.json:
            print(json.dumps({"url": url, "socket": sock, "token_file": token_file}))
        else:
            print(url)
            print(f"(read-only over TCP; control actions need 'Authorization: Bearer TOKEN' "
                  f"with the token in {token_file})")
        return 0
    host = socket.gethostname()
    ssh = f"ssh -L {SSH_LOCAL_PORT}:{shlex.quote(sock)} {shlex.quote(host)}"
    url = f"http://127.0.0.1:{SSH_LOCAL_PORT}/ui/"
    if args.json:
        print(json.dumps({"url": None, "socket": sock, "ssh": ssh, "then_open": url}))
        return 0
    print("The web view is served on the control socket only (daemon.http_listen is not set).")
    print("From your machine, forward a local port to the socket:")
    print(f"  {ssh}")
    print(f"then open {url}")
    print(f"(on this host: curl --unix-socket {shlex.quote(sock)} http://fspd/ui/api/state)")
    return 0
