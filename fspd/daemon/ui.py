"""The live web view: ``/ui/`` on the control socket, and on ``daemon.http_listen`` if set.

One page (plain HTML, CSS and a script drawing SVG, shipped in ``ui_static/``; no build step)
reads ``/ui/api/state`` once, then follows ``/ui/api/events`` (Server-Sent Events). Those carry
the daemon's own job events (the ones ``fspd watch`` streams) and what :class:`Recorder` makes
of the progress events: a sample per job and second for the charts (the last hour, bounded),
and host totals (throughput, requests/s against the quotas, memory budget in use).

Over TCP the daemon cannot tell who is asking (no peer credentials), so that port is
read-only: a request that is not GET/HEAD is refused (403) unless it carries
``Authorization: Bearer TOKEN`` with the token the daemon writes to ``state_dir/ui-token``
(mode 0600, new at every start). Only loopback addresses are accepted; requests from browsers
must name a loopback Host and come from the page's own origin (see :func:`make_guard`).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from fspd.config import parse_listen
from fspd.daemon.ui_recorder import Recorder, route
from fspd.errors import BadInput
from fspd.log import get_logger

if TYPE_CHECKING:
    from fspd.daemon.service import Service

log = get_logger("fspd.daemon.ui")

TOKEN_FILE = "ui-token"
TOKEN_OK = "fspd_ui_token_ok"  # request key: the TCP request carried the right token
MAX_CLIENTS = 32  # pages following the event stream at once
CLIENT_QUEUE = 512  # events buffered per page; a slow page loses the oldest
STATIC = {"": ("index.html", "text/html"), "app.js": ("app.js", "text/javascript"),
          "app.css": ("app.css", "text/css")}
SAFE_METHODS = ("GET", "HEAD")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SERVICE_KEY: web.AppKey[Any] = web.AppKey("ui_service")
RECORDER_KEY: web.AppKey[Recorder] = web.AppKey("ui_recorder")


# --- settings ----------------------------------------------------------------------------

def url_of(listen: str) -> str:
    host, port = parse_listen(listen)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/ui/"


def token_path(state_dir: Path | str) -> Path:
    return Path(state_dir) / TOKEN_FILE


def new_token(state_dir: Path | str) -> str:
    """A fresh control token in ``state_dir/ui-token``, readable by the daemon's user only."""
    path = token_path(state_dir)
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{TOKEN_FILE}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        os.write(fd, token.encode() + b"\n")
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return token


# --- routes ------------------------------------------------------------------------------

def _service(request: web.Request) -> Service:
    return request.app[SERVICE_KEY]


async def page(request: web.Request) -> web.Response:
    name, content_type = STATIC[request.match_info.get("file", "")]
    body = resources.files("fspd.daemon").joinpath("ui_static", name).read_bytes()
    return web.Response(body=body, content_type=content_type, charset="utf-8", headers={
        "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
        # The page loads nothing from elsewhere and runs no inline script.
        "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                   "frame-ancestors 'none'",
        "Referrer-Policy": "no-referrer"})


async def to_page(_request: web.Request) -> web.Response:
    raise web.HTTPFound("/ui/")


async def state(request: web.Request) -> web.Response:
    service = _service(request)
    recorder = request.app[RECORDER_KEY]
    jobs = [{**r.summary(), "route": route(r)} for r in service.scheduler.jobs.values()]
    body = {"jobs": jobs, "host": recorder.host or recorder.host_totals(),
            "status": service.status(), "now": time.time()}
    return web.json_response(body, dumps=lambda d: json.dumps(d, default=str))


async def series(request: web.Request) -> web.Response:
    recorder = request.app[RECORDER_KEY]
    job = request.query.get("job", "")
    return web.json_response({"job": job, "samples": recorder.samples(job)})


async def events(request: web.Request) -> web.StreamResponse:
    recorder = request.app[RECORDER_KEY]
    if len(recorder.clients) >= MAX_CLIENTS:
        return web.json_response({"error": "TooManyClients", "field": None, "message":
                                  f"{MAX_CLIENTS} pages already follow the events"}, status=503)
    queue: asyncio.Queue[str] = asyncio.Queue(CLIENT_QUEUE)
    recorder.clients.add(queue)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache"})
    try:
        await resp.prepare(request)
        await resp.write(b"retry: 2000\n\n")
        while True:
            await resp.write((await queue.get()).encode())
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        recorder.clients.discard(queue)
    return resp


def _is_tcp(request: web.Request) -> bool:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    return sock is not None and getattr(sock, "family", None) in (socket.AF_INET,
                                                                  socket.AF_INET6)


def _loopback_host(header: str | None) -> bool:
    """The Host header names a loopback host (``127.0.0.1:8485``, ``[::1]:8485``, ...)."""
    host = header or ""
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _forbidden(message: str, status: int = 403) -> web.Response:
    return web.json_response({"error": "Forbidden", "message": message, "field": None},
                             status=status)


def _cross_origin(request: web.Request) -> bool:
    """A browser sent this from a page of another origin (its Origin is not this Host)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return False
    return origin.partition("://")[2].rstrip("/").lower() != request.headers.get(
        "Host", "").lower()


def make_guard(token: Callable[[], str | None], token_file: Path) -> Any:
    """Middleware. From a browser (it sends Origin or Sec-Fetch-Site; the CLI and curl do
    not), on either transport: loopback Host only, so a page elsewhere cannot read through a
    name rebound to 127.0.0.1 (or through an ``ssh -L`` port), and no request from a page of
    another origin. Over TCP: read-only unless the request carries the state dir's token."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        tcp = _is_tcp(request)
        browser = "Origin" in request.headers or "Sec-Fetch-Site" in request.headers
        if (tcp or browser) and not _loopback_host(request.headers.get("Host")):
            return _forbidden("the web view answers to a loopback Host only "
                              "(127.0.0.1, [::1] or localhost)", 421)
        if _cross_origin(request):
            return _forbidden("refused: a request from a page of another origin")
        if tcp and request.method not in SAFE_METHODS:
            expected = token()
            given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
                return _forbidden("read-only over TCP: control actions need "
                                  f"'Authorization: Bearer TOKEN' with the token in "
                                  f"{token_file}, or the control socket")
            request[TOKEN_OK] = True
        return await handler(request)

    return guard


class Tcp:
    """The optional TCP listener and its token."""

    def __init__(self) -> None:
        self.token: str | None = None


TCP_KEY: web.AppKey[Tcp] = web.AppKey("ui_tcp")


def install(app: web.Application, service: Service) -> None:
    """Add the view's routes, the recorder and the TCP guard to the control app."""
    recorder = Recorder(service)
    tcp = Tcp()
    app[SERVICE_KEY] = service
    app[RECORDER_KEY] = recorder
    app[TCP_KEY] = tcp
    app.middlewares.insert(0, make_guard(lambda: tcp.token,
                                         token_path(service.settings.daemon.state_dir)))
    app.on_startup.append(recorder.start)
    app.on_cleanup.append(recorder.stop)
    app.router.add_get("/ui", to_page)
    app.router.add_get("/ui/", page)
    app.router.add_get("/ui/{file:app\\.(?:js|css)}", page)
    app.router.add_get("/ui/api/state", state)
    app.router.add_get("/ui/api/series", series)
    app.router.add_get("/ui/api/events", events)


def token_ok(request: web.Request) -> bool:
    """The request came over TCP with the right token (checked by the guard)."""
    return bool(request.get(TOKEN_OK))


async def listen_tcp(service: Service, runner: web.AppRunner) -> None:
    """Listen on ``daemon.http_listen`` too, if set; write a fresh token first."""
    listen = service.settings.daemon.http_listen
    if not listen:
        return
    host, port = parse_listen(listen)
    state_dir = service.settings.daemon.state_dir
    try:
        runner.app[TCP_KEY].token = new_token(state_dir)
    except OSError as exc:
        raise BadInput(f"cannot write {token_path(state_dir)}: {exc.strerror}",
                       field="daemon.state_dir") from None
    try:
        await web.TCPSite(runner, host, port, reuse_address=True).start()
    except OSError as exc:
        raise BadInput(f"cannot listen on {listen}: {exc.strerror}",
                       field="daemon.http_listen") from None
    log.info("web_view_listening", url=url_of(listen), read_only=True,
             control_key_file=str(token_path(state_dir)))
