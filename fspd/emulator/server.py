"""The aiohttp application: routing, authentication, limits, faults, error rendering."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

from aiohttp import web

from fspd.emulator import auth, control_api, ebs, ec2, errors
from fspd.emulator.errors import ApiError
from fspd.emulator.state import Ctx, State, Stats
from fspd.log import get_logger

log = get_logger("fspd.emulator")
STATE = web.AppKey("state", State)

_ROUTES = (
    ("POST", "/snapshots", "StartSnapshot"),
    ("PUT", "/snapshots/{snapshot_id}/blocks/{index}", "PutSnapshotBlock"),
    ("GET", "/snapshots/{snapshot_id}/blocks/{index}", "GetSnapshotBlock"),
    ("GET", "/snapshots/{snapshot_id}/blocks", "ListSnapshotBlocks"),
    ("GET", "/snapshots/{snapshot_id}/changedblocks", "ListChangedBlocks"),
    ("POST", "/snapshots/completion/{snapshot_id}", "CompleteSnapshot"),
)
_GET_PUT = {"GetSnapshotBlock": ("get_rate", "account_get_rate"),
            "PutSnapshotBlock": ("put_rate", "account_put_rate")}
_LIST = {"ListSnapshotBlocks", "ListChangedBlocks"}
_CONTROL = {"StartSnapshot", "CompleteSnapshot"}


def ebs_error(err: ApiError) -> web.Response:
    body: dict[str, Any] = {"Message": err.message}
    if err.reason:
        body["Reason"] = err.reason
    return web.Response(body=json.dumps(body).encode(), status=err.status,
                        content_type="application/json",
                        headers={"x-amzn-ErrorType": err.code})


def _auth_error(protocol: str, kind: str, message: str) -> ApiError:
    """Authentication failures in each protocol's own words."""
    if protocol == "ec2":
        if kind == "missing":
            return ApiError(403, "MissingAuthenticationToken",
                            message)
        if kind == "signature":
            return ApiError(403, "SignatureDoesNotMatch", message)
        return ApiError(401, "AuthFailure", message)
    if kind == "signature":
        return ApiError(403, "InvalidSignatureException", message)
    if kind == "region":
        return ApiError(403, "UnrecognizedClientException", message)
    return errors.access_denied(message)


async def _authenticate(state: State, request: web.Request, protocol: str, op: str) -> Ctx:
    scope = auth.parse(request.headers.get("Authorization"))
    if scope is None:
        raise _auth_error(protocol, "missing",
                          "Request is missing a valid SigV4 Authorization header.")
    cfg = state.config
    if scope.region not in cfg["regions"]:
        raise _auth_error(protocol, "region",
                          f"The region '{scope.region}' is not enabled for this account.")
    account = cfg["default_account"]
    keys = cfg["access_keys"]
    if keys:
        key = keys.get(scope.access_key)
        if key is None:
            raise (ApiError(401, "AuthFailure", "AWS was not able to validate the provided "
                            "access credentials") if protocol == "ec2" else
                   errors.access_denied(f"The access key '{scope.access_key}' is not known."))
        body = await request.read()
        digest = hashlib.sha256(body).digest()
        if op == "PutSnapshotBlock":
            request["body_sha256"] = digest
        candidates = [digest.hex(), auth.UNSIGNED_PAYLOAD]
        headers = {k.lower(): v for k, v in request.headers.items()}
        if not auth.verify(scope, key["secret"], request.method, request.raw_path, headers,
                           candidates):
            raise _auth_error(protocol, "signature",
                              "The request signature we calculated does not match the "
                              "signature you provided.")
        account = key["account"]
    for rule in cfg["deny"]:
        if ((rule["operations"] is None or op in rule["operations"])
                and rule["region"] in (None, scope.region)
                and rule["access_key"] in (None, scope.access_key)):
            if protocol == "ec2":
                raise ApiError(403, "UnauthorizedOperation",
                               "You are not authorized to perform this operation.")
            raise errors.access_denied(f"User is not authorized to perform {op} in "
                                       f"{scope.region}.")
    return Ctx(op=op, region=scope.region, account=account, access_key=scope.access_key)


def _limit(state: State, ctx: Ctx, snapshot_id: str | None) -> None:
    cfg = state.config
    burst = cfg["burst_seconds"]
    take = state.buckets.take
    if ctx.op in _GET_PUT:
        snap_rate, account_rate = _GET_PUT[ctx.op]
        if not take((ctx.op, ctx.region, snapshot_id), cfg[snap_rate], burst):
            state.stats.throttled += 1
            raise errors.throttled(f"{ctx.op} rate exceeded for snapshot {snapshot_id}.",
                                   "RESOURCE_LEVEL_THROTTLE")
        rate = cfg[account_rate]
    elif ctx.op in _LIST:
        rate = cfg["list_rate"]
    elif ctx.op in _CONTROL:
        rate = cfg["control_rate"]
    else:
        return
    if not take((ctx.op, ctx.region, ctx.account), rate, burst):
        state.stats.throttled += 1
        raise errors.throttled(f"{ctx.op} rate exceeded for the account.", "ACCOUNT_THROTTLED")


class _Reset(Exception):
    """The connection was reset on purpose: nothing more to send."""


async def _reset_connection(request: web.Request, op: str) -> web.StreamResponse:
    """Drop the connection mid-way: GET after part of the body, others after part of the
    request body, with no response."""
    transport = request.transport
    if op == "GetSnapshotBlock":
        raise _Reset  # handled after the handler ran: see _serve
    try:
        await request.content.read(65536)
    finally:
        if transport is not None:
            transport.abort()
    raise _Reset


async def _serve(state: State, request: web.Request, protocol: str, op: str,
                 handler: Any) -> web.StreamResponse:
    ctx = await _authenticate(state, request, protocol, op)
    snapshot_id = request.match_info.get("snapshot_id")
    state.stats.count(op, ctx.region, snapshot_id)
    if protocol == "ebs" and state.config["throttling"]:
        _limit(state, ctx, snapshot_id)
    faults = state.faults
    reset_get = False
    if faults.applies(op, ctx.region):
        await faults.hold()
        delay = faults.latency()
        if delay:
            await asyncio.sleep(delay)
        if faults.roll("throttle"):
            if protocol == "ec2":
                raise ApiError(503, "RequestLimitExceeded", "Request limit exceeded.")
            raise errors.throttled("Injected throttle.", "ACCOUNT_THROTTLED")
        if faults.roll("error"):
            raise errors.internal("Injected internal error.")
        if faults.roll("reset"):
            if op != "GetSnapshotBlock":
                await _reset_connection(request, op)
            reset_get = True
    response = await handler(state, ctx, request)
    if reset_get and isinstance(response, web.Response) and response.status == 200:
        body = response.body
        assert isinstance(body, bytes | bytearray | memoryview)
        stream = web.StreamResponse(status=200, headers=response.headers)
        stream.content_length = len(body)
        await stream.prepare(request)
        await stream.write(bytes(body[: len(body) // 3]))
        if request.transport is not None:
            request.transport.abort()
        raise _Reset
    return response


def _ebs_view(op: str) -> Any:
    handler = ebs.HANDLERS[op]

    async def view(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        try:
            return await _serve(state, request, "ebs", op, handler)
        except ApiError as err:
            return ebs_error(err)
        except _Reset:
            raise asyncio.CancelledError from None
        except Exception as exc:
            log.exception("internal_error", op=op, error=repr(exc))
            return ebs_error(errors.internal(f"Internal error: {type(exc).__name__}"))

    return view


async def _ec2_view(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    try:
        form = await request.post()
        op = str(form.get("Action") or "")
        fn = ec2.HANDLERS.get(op)
        if fn is None:
            raise ApiError(400, "InvalidAction",
                           f"The action {op or '(none)'} is not valid for this web service.")
        flat = {k: str(v) for k, v in form.items()}

        async def handler(state: State, ctx: Ctx, _req: web.Request) -> web.StreamResponse:
            if flat.get("DryRun", flat.get("dryRun", "")).lower() == "true":
                raise ApiError(412, "DryRunOperation",
                               "Request would have succeeded, but DryRun flag is set.")
            return fn(state, ctx, flat)

        return await _serve(state, request, "ec2", op, handler)
    except ApiError as err:
        return ec2.error_response(err)
    except _Reset:
        raise asyncio.CancelledError from None
    except Exception as exc:
        log.exception("internal_error", op="ec2", error=repr(exc))
        return ec2.error_response(ApiError(500, "InternalError",
                                           "An internal error has occurred"))


async def _unknown(request: web.Request) -> web.StreamResponse:
    return ebs_error(ApiError(404, "UnknownOperationException",
                              f"No operation matches {request.method} {request.path}."))


def make_app(state: State) -> web.Application:
    app = web.Application(client_max_size=4 * 1024 * 1024)
    app[STATE] = state
    for method, path, op in _ROUTES:
        app.router.add_route(method, path, _ebs_view(op), name=op)
    app.router.add_post("/", _ec2_view)
    control_api.add_routes(app, STATE)
    app.router.add_route("*", "/{tail:.*}", _unknown)
    return app


def count_connections(server: web.Server, stats: Stats) -> None:
    """Count the connections ``server`` accepts in ``stats.connections``. aiohttp calls a
    server's ``connection_made`` once per connection, after the TLS handshake on HTTPS, and
    has no public hook for it, so this wraps it."""
    made = server.connection_made

    def connection_made(handler: Any, transport: asyncio.Transport) -> None:
        stats.connections += 1
        made(handler, transport)

    server.connection_made = connection_made  # type: ignore[method-assign]


def new_state(config: dict[str, Any], data_dir: Path) -> State:
    return State(config, data_dir)
