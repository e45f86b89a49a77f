"""The test-control API under ``/_emulator/`` (JSON, no auth): config, faults, synthetic
snapshots, introspection, stats."""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from fspd.emulator import config as cfgmod
from fspd.emulator.ebs import default_kms_arn
from fspd.emulator.state import State
from fspd.emulator.store import EBS_DIRECT_VOLUME, Snapshot, new_snapshot_id
from fspd.emulator.synthetic import Synthetic

IMAGE_MAX = 256 * 1024 * 1024
_SYNTHETIC_KEYS = {"region", "volume_size", "allocation", "density", "zero_fraction", "seed",
                   "encrypted", "parent_snapshot_id", "description", "tags", "owner_id",
                   "kms_key_arn", "volume_id"}


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(data).encode(), status=status,
                        content_type="application/json")


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise BadRequest("body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object")
    return data


def _synthetic(state: State, spec: dict[str, Any]) -> Snapshot:
    unknown = set(spec) - _SYNTHETIC_KEYS
    if unknown:
        raise BadRequest(f"unknown synthetic key: {sorted(unknown)[0]}")
    region = spec.get("region", "us-east-1")
    if region not in state.config["regions"]:
        raise BadRequest(f"region {region!r} is not in the region list")
    size = spec.get("volume_size")
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 65536:
        raise BadRequest("volume_size must be an integer 1..65536 (GiB)")
    allocation = spec.get("allocation", "full")
    if allocation not in ("full", "sparse"):
        raise BadRequest("allocation must be 'full' or 'sparse'")
    density = 1.0 if allocation == "full" else spec.get("density", 0.1)
    zero = spec.get("zero_fraction", 0.0)
    for name, value in (("density", density), ("zero_fraction", zero)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise BadRequest(f"{name} must be a number in 0..1")
    seed = spec.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or abs(seed) >= 1 << 120:
        raise BadRequest("seed must be an integer")
    owner = str(spec.get("owner_id") or state.config["default_account"])
    parent = None
    if spec.get("parent_snapshot_id"):
        parent = state.store.get(region, spec["parent_snapshot_id"])
        if parent is None:
            raise BadRequest(f"parent {spec['parent_snapshot_id']} not found in {region}", 404)
        if size < parent.volume_size:
            raise BadRequest("volume_size is smaller than the parent's")
    encrypted = bool(spec.get("encrypted", False)) or bool(parent and parent.encrypted)
    kms = spec.get("kms_key_arn")
    if parent is not None and parent.encrypted:
        kms = parent.kms_key_arn
    elif encrypted and not kms:
        kms = default_kms_arn(region, owner)
    volume_id = spec.get("volume_id", EBS_DIRECT_VOLUME)
    if not isinstance(volume_id, str) or not re.fullmatch(r"vol-[0-9a-f]{8,17}", volume_id):
        raise BadRequest("volume_id must look like vol-0123456789abcdef0")
    tags = spec.get("tags") or {}
    if not isinstance(tags, dict):
        raise BadRequest("tags must be an object {key: value}")
    synth = Synthetic(seed=seed, nblocks=size * 2048, density=float(density),
                      zero_fraction=float(zero))
    return state.store.add(Snapshot(
        id=new_snapshot_id(), region=region, owner_id=owner, volume_size=size, parent=parent,
        encrypted=encrypted, kms_key_arn=kms if encrypted else None,
        sse_type=("sse-kms" if spec.get("kms_key_arn") else "sse-ebs") if encrypted else "none",
        tags=[{"Key": str(k), "Value": str(v)} for k, v in tags.items()],
        description=spec.get("description"), synthetic=synth, volume_id=volume_id))


def add_routes(app: web.Application, key: web.AppKey[State]) -> None:
    def state_of(request: web.Request) -> State:
        return request.app[key]

    async def reset(request: web.Request) -> web.Response:
        state_of(request).reset()
        return _json({"ok": True})

    async def get_config(request: web.Request) -> web.Response:
        return _json(cfgmod.public(state_of(request).config))

    async def patch_config(request: web.Request) -> web.Response:
        state = state_of(request)
        try:
            state.config = cfgmod.merged(state.config, await _body(request))
        except cfgmod.ConfigError as exc:
            raise BadRequest(str(exc)) from None
        return _json(cfgmod.public(state.config))

    async def get_faults(request: web.Request) -> web.Response:
        faults = state_of(request).faults
        return _json({**faults.settings, "counts": dict(faults.counts)})

    async def put_faults(request: web.Request) -> web.Response:
        try:
            return _json(state_of(request).faults.set(await _body(request)))
        except ValueError as exc:
            raise BadRequest(str(exc)) from None

    async def delete_faults(request: web.Request) -> web.Response:
        state_of(request).faults.clear()
        return _json(state_of(request).faults.settings)

    async def synthetic(request: web.Request) -> web.Response:
        snap = _synthetic(state_of(request), await _body(request))
        return _json({"SnapshotId": snap.id, **snap.record()})

    async def snapshots(request: web.Request) -> web.Response:
        region = request.query.get("region")
        return _json([s.record() for s in state_of(request).store.all(region)])

    async def image(request: web.Request) -> web.Response:
        state = state_of(request)
        region = request.query.get("region", "us-east-1")
        snap = state.store.get(region, request.match_info["snapshot_id"])
        if snap is None:
            raise BadRequest(f"snapshot not found in {region}", 404)
        size = snap.volume_size << 30
        try:
            offset = int(request.query.get("offset", 0))
            length = int(request.query.get("length", size - offset))
        except ValueError:
            raise BadRequest("offset and length must be integers") from None
        if offset < 0 or length < 0 or offset + length > size:
            raise BadRequest("range outside the volume")
        if length > IMAGE_MAX:
            raise BadRequest(f"length above {IMAGE_MAX} bytes: ask in pieces")
        return web.Response(body=snap.image(offset, length),
                            content_type="application/octet-stream")

    async def stats(request: web.Request) -> web.Response:
        state = state_of(request)
        return _json(state.stats.as_dict(state.faults.counts))

    async def reset_stats(request: web.Request) -> web.Response:
        state = state_of(request)
        state.stats.reset()
        state.faults.counts.clear()
        return _json({"ok": True})

    def guarded(fn: Any) -> Any:
        async def view(request: web.Request) -> web.StreamResponse:
            try:
                return await fn(request)
            except BadRequest as exc:
                return _json({"error": str(exc)}, exc.status)
        return view

    for method, path, fn in (
        ("POST", "/_emulator/reset", reset),
        ("GET", "/_emulator/config", get_config),
        ("PATCH", "/_emulator/config", patch_config),
        ("GET", "/_emulator/faults", get_faults),
        ("PUT", "/_emulator/faults", put_faults),
        ("DELETE", "/_emulator/faults", delete_faults),
        ("POST", "/_emulator/synthetic", synthetic),
        ("GET", "/_emulator/snapshots", snapshots),
        ("GET", "/_emulator/snapshots/{snapshot_id}/image", image),
        ("GET", "/_emulator/stats", stats),
        ("POST", "/_emulator/stats/reset", reset_stats),
    ):
        app.router.add_route(method, path, guarded(fn))
