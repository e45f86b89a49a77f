"""The control socket: HTTP/1.1 + JSON on a Unix socket (``curl --unix-socket``).

Read-only: ``GET /v1/status``, ``/v1/jobs``, ``/v1/jobs/{id}``, ``/v1/events`` (NDJSON stream,
``?job=``), ``/v1/fleet`` (every fleet job across hosts, ``?job=``), ``/metrics``. Control
(see :mod:`fspd.daemon.access`): ``POST /v1/jobs/{id}/cancel|pause|resume``,
``PUT /v1/bandwidth``. Every error is a JSON body
``{"error", "message", "field"}`` with a 4xx/5xx status.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from fspd.daemon import metrics, ui
from fspd.daemon.access import Peer, peer_of
from fspd.daemon.fleet import host_id
from fspd.daemon.fleet_view import FAILURES, NotInFleet
from fspd.errors import BadInput
from fspd.log import get_logger

if TYPE_CHECKING:
    from fspd.daemon.service import Service

log = get_logger("fspd.daemon.control")

API = "/v1"
MAX_BODY = 64 * 1024
SERVICE_KEY: web.AppKey[Service] = web.AppKey("service")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(self, status: int, error: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.error, self.field = status, error, field


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, default=str) + "\n", status=status,
                        content_type="application/json")


def _error(status: int, error: str, message: str, field: str | None = None) -> web.Response:
    return _json({"error": error, "message": message, "field": field}, status)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return _error(exc.status, exc.error, str(exc), exc.field)
    except BadInput as exc:
        return _error(409 if exc.field == "job" else 400, "BadInput", str(exc), exc.field)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason.replace(" ", ""), exc.reason)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("control_request_failed", path=request.path)
        return _error(500, "InternalError", "internal error; the daemon log has the details")


def _service(request: web.Request) -> Service:
    return request.app[SERVICE_KEY]


def _peer(request: web.Request) -> Peer | None:
    return peer_of(request.transport)


def _require_control(request: web.Request) -> str:
    """The peer's name for the log; raises 403 unless it may control the daemon."""
    service = _service(request)
    peer = _peer(request)
    if peer is None and ui.token_ok(request):  # over TCP, with the state dir's token
        return "the holder of the web view's token"
    if peer is None:  # not a Unix socket peer we can identify: refuse control
        raise ApiError(403, "Forbidden", "control needs a Unix-socket peer with credentials")
    if not service.policy.may_control(peer):
        raise ApiError(403, "Forbidden", f"uid {peer.uid} may only read; control actions need "
                       f"{service.policy.explain()}")
    return f"uid {peer.uid} (pid {peer.pid})"


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(413, "TooLarge", f"body over {MAX_BODY} bytes")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise ApiError(413, "TooLarge", f"body over {MAX_BODY} bytes")
    try:
        data = json.loads(raw or b"{}")
    except (ValueError, RecursionError):
        raise ApiError(400, "BadInput", "body is not valid JSON", "(body)") from None
    if not isinstance(data, dict):
        raise ApiError(400, "BadInput", "body must be a JSON object", "(body)")
    return data


def _not_found(ident: str) -> ApiError:
    return ApiError(404, "NotFound", f"no job {ident!r} in this daemon or its spool (new/, "
                    "active/, done/, failed/)", "job")


async def _resolve(service: Service, ident: str) -> str:
    """The full id of the job ``ident`` (an id or a unique prefix) names. A job file just
    dropped into new/ may not be known yet: rescan once before saying it does not exist."""
    name = service.scheduler.resolve(ident)
    if name is None:
        await service.scheduler.scan()
        name = service.scheduler.resolve(ident)
    if name is None:
        raise _not_found(ident)
    return name


async def _job(request: web.Request) -> Any:
    service = _service(request)
    name = await _resolve(service, request.match_info["job"])
    rec = service.scheduler.jobs.get(name)
    if rec is None:  # finished, and known only from its record in done/ or failed/
        found = service.finished_record(name) or {}
        raise BadInput(f"job {name} is already {found.get('state', 'finished')}", field="job")
    return rec


async def status(request: web.Request) -> web.Response:
    service = _service(request)
    peer = _peer(request)
    out = service.status()
    out["you"] = None if peer is None else {
        "uid": peer.uid, "gid": peer.gid, "control": service.policy.may_control(peer)}
    return _json(out)


async def list_jobs(request: web.Request) -> web.Response:
    wanted = request.query.get("state")
    jobs = [r.summary() for r in _service(request).scheduler.jobs.values()
            if wanted is None or r.state == wanted]
    return _json({"jobs": jobs})


async def get_job(request: web.Request) -> web.Response:
    service = _service(request)
    ident = request.match_info["job"]
    name = await _resolve(service, ident)
    rec = service.scheduler.jobs.get(name)
    if rec is not None:
        return _json(rec.detail())
    found = service.finished_record(name)
    if found is None:
        raise _not_found(ident)
    return _json(found)


async def job_action(request: web.Request) -> web.Response:
    who = _require_control(request)
    action = request.match_info["action"]
    rec = await _job(request)
    scheduler = _service(request).scheduler
    if action == "cancel":
        scheduler.cancel(rec, who)
    elif action == "pause":
        scheduler.pause(rec)
    elif action == "resume":
        scheduler.resume(rec)
    else:
        raise ApiError(404, "NotFound", f"unknown action {action!r}: cancel, pause or resume")
    log.info("job_control", job=rec.id, action=action, peer=who)
    return _json(rec.summary(), 202 if action == "cancel" else 200)


async def put_bandwidth(request: web.Request) -> web.Response:
    who = _require_control(request)
    body = await _body(request)
    rate = body.get("bytes_per_s")
    if isinstance(rate, bool) or not isinstance(rate, int | float) or rate < 0:
        raise ApiError(400, "BadInput", "bytes_per_s must be a number >= 0 (0 = unlimited)",
                       "bytes_per_s")
    service = _service(request)
    service.scheduler.bandwidth.set_rate(rate)
    log.info("bandwidth_changed", bytes_per_s=rate, peer=who)
    service.update_status()
    return _json({"bytes_per_s": service.scheduler.bandwidth.rate})


async def events(request: web.Request) -> web.StreamResponse:
    service = _service(request)
    job = request.query.get("job")
    if job is not None:  # an unknown job is an error now, not a stream that never ends
        job = await _resolve(service, job)
    sub = service.events.subscribe(job)
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson",
                                       "Cache-Control": "no-cache"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    try:
        for rec in list(service.scheduler.jobs.values()):
            if job is None or rec.id == job:
                await resp.write(_line({"event": "job", **rec.summary()}))
        if job is not None and job not in service.scheduler.jobs:
            found = service.finished_record(job)
            if found is not None:
                await resp.write(_line({"event": "job", **found}))
        async for event in sub:
            await resp.write(_line(event))
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        service.events.unsubscribe(sub)
    return resp


def _line(event: dict[str, Any]) -> bytes:
    return json.dumps(event, default=str).encode() + b"\n"


async def fleet_jobs(request: web.Request) -> web.Response:
    """Every job of the fleet, as ``fspd status --fleet --json`` lists them (fleet_view.py),
    and this daemon's owner id (``host``) as the table names it."""
    service = _service(request)
    prefix = request.query.get("job") or None
    try:
        listed = await service.fleet_view.jobs(service.settings, prefix)
    except NotInFleet:
        raise ApiError(404, "NotInFleet", "this daemon is not in a fleet: its settings have "
                       "no [fleet] section (docs/fleet.md)", "fleet") from None
    except FAILURES as exc:
        table = service.settings.fleet.table if service.settings.fleet else "?"
        raise ApiError(503, "FleetUnavailable", f"cannot read the fleet's table {table}: "
                       f"{exc}", "fleet.table") from None
    if prefix and not listed["jobs"]:
        raise ApiError(404, "NotFound", f"no fleet job {prefix!r} in table {listed['table']}",
                       "job")
    fleet = service.settings.fleet
    assert fleet is not None  # the view answered: the daemon is in a fleet
    return _json({"host": host_id(fleet.host), **listed})


async def get_metrics(request: web.Request) -> web.Response:
    return web.Response(text=metrics.render(_service(request).scheduler),
                        content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


def make_app(service: Service) -> web.Application:
    app = web.Application(middlewares=[errors_middleware], client_max_size=MAX_BODY)
    app[SERVICE_KEY] = service
    app.router.add_get(f"{API}/status", status)
    app.router.add_get(f"{API}/jobs", list_jobs)
    app.router.add_get(f"{API}/jobs/{{job}}", get_job)
    app.router.add_post(f"{API}/jobs/{{job}}/{{action}}", job_action)
    app.router.add_put(f"{API}/bandwidth", put_bandwidth)
    app.router.add_get(f"{API}/events", events)
    app.router.add_get(f"{API}/fleet", fleet_jobs)
    app.router.add_get("/metrics", get_metrics)
    ui.install(app, service)
    return app


def prepare_socket_path(path: str) -> None:
    """Remove a stale socket file (nobody listening); refuse if a daemon answers there."""
    import socket as _socket
    import stat

    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise BadInput(f"{path} exists and is not a socket", field="daemon.socket_path")
    probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)
        return
    except OSError as exc:
        raise BadInput(f"cannot use {path}: {exc.strerror}", field="daemon.socket_path") from None
    finally:
        probe.close()
    raise BadInput(f"another fspd daemon is listening on {path}", field="daemon.socket_path")
