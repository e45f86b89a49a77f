"""``fspd emulator``: run the strict EBS Direct + EC2 emulator on 127.0.0.1."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fspd.emulator import config as cfgmod

if TYPE_CHECKING:
    import ssl

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "emulator", help="run the strict local EBS Direct + EC2 emulator",
        description="Serve the EBS Direct APIs (and EC2 DescribeSnapshots, DescribeRegions, "
        "DeleteSnapshot) locally, strictly as AWS documents them. Test control API under "
        "/_emulator/. See docs/emulator.md.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8484, help="0 picks a free port")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow binding a non-loopback address")
    p.add_argument("--ready-file", type=Path, help="write the base URL here once listening")
    p.add_argument("--data-dir", type=Path,
                   help="where written blocks live (default: a temp dir removed at exit)")
    p.add_argument("--config", type=Path, help="TOML file with control-API config keys")
    p.add_argument("--access-key", action="append", default=[], metavar="AKID:SECRET[:ACCOUNT]",
                   help="accept only these keys and verify signatures (repeatable)")
    p.add_argument("--regions", help="comma-separated region list")
    p.add_argument("--block-token-ttl", type=float, metavar="SECONDS")
    p.add_argument("--page-token-ttl", type=float, metavar="SECONDS")
    p.add_argument("--completion-delay", type=float, metavar="SECONDS")
    p.add_argument("--not-found-window", type=float, metavar="SECONDS")
    p.add_argument("--no-throttling", action="store_true")
    p.add_argument("--tls", action="store_true",
                   help="serve HTTPS with a certificate made at start (its CA is written to "
                   "--cert-out, for AWS_CA_BUNDLE)")
    p.add_argument("--cert-out", type=Path, metavar="PATH",
                   help="with --tls: where to write the CA certificate (PEM) clients must "
                   "trust (default: ca.pem in the data dir)")
    p.set_defaults(handler=run)


def build_config(args: argparse.Namespace) -> dict[str, Any]:
    config = cfgmod.load_toml(args.config) if args.config else cfgmod.merged(cfgmod.DEFAULTS, {})
    changes: dict[str, Any] = {}
    if args.regions:
        changes["regions"] = [r.strip() for r in args.regions.split(",") if r.strip()]
    for name in ("block_token_ttl", "page_token_ttl", "completion_delay", "not_found_window"):
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    if args.no_throttling:
        changes["throttling"] = False
    if args.access_key:
        keys = dict(config["access_keys"])
        for text in args.access_key:
            akid, spec = cfgmod.parse_access_key(text)
            keys[akid] = spec
        changes["access_keys"] = keys
    return cfgmod.merged(config, changes)


def _write_ready(path: Path, url: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(url)
    os.replace(tmp, path)


async def _serve(args: argparse.Namespace, config: dict[str, Any], data_dir: Path,
                 ssl_context: ssl.SSLContext | None) -> None:
    from aiohttp import web

    from fspd.emulator.server import count_connections, make_app, new_state

    state = new_state(config, data_dir)
    app = make_app(state)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    assert runner.server is not None
    count_connections(runner.server, state.stats)
    site = web.TCPSite(runner, args.host, args.port, reuse_address=True,
                       ssl_context=ssl_context)
    await site.start()
    server = site._server
    assert server is not None and server.sockets  # type: ignore[union-attr]
    port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"{'https' if ssl_context else 'http'}://{host}:{port}"
    if args.ready_file:
        _write_ready(args.ready_file, url)
    event = {"event": "listening", "url": url}
    if ssl_context is not None:
        event["ca_bundle"] = str(args.cert_out)
    print(json.dumps(event), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def run(args: argparse.Namespace) -> int:
    from fspd.loop import run as run_loop

    if args.host not in LOOPBACK and not args.allow_remote:
        print(f"fspd emulator: refusing to bind {args.host}: not loopback "
              "(use --allow-remote)", file=sys.stderr)
        return 2
    try:
        config = build_config(args)
    except (cfgmod.ConfigError, OSError, ValueError) as exc:
        print(f"fspd emulator: {exc}", file=sys.stderr)
        return 2
    if args.cert_out is not None and not args.tls:
        print("fspd emulator: --cert-out: needs --tls", file=sys.stderr)
        return 2
    temp = None
    if args.data_dir is None:
        temp = tempfile.mkdtemp(prefix="fspd-emulator-")
        data_dir = Path(temp)
    else:
        data_dir = args.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
    try:
        ssl_context = None
        if args.tls:
            from fspd.emulator.tls import TlsUnavailable, make_server_context

            args.cert_out = (args.cert_out or data_dir / "ca.pem").absolute()
            try:
                ssl_context = make_server_context(args.host, args.cert_out)
            except TlsUnavailable as exc:
                print(f"fspd emulator: {exc}", file=sys.stderr)
                return 2
            except OSError as exc:
                print(f"fspd emulator: --cert-out: cannot write {args.cert_out}: "
                      f"{exc.strerror or exc}", file=sys.stderr)
                return 2
        run_loop(_serve(args, config, data_dir, ssl_context))
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    return 0
