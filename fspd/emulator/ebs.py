"""The six EBS Direct operations (REST-JSON, model ebs/2019-11-02)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import time
import uuid
from typing import Any

from aiohttp import web

from fspd.emulator import errors
from fspd.emulator.state import Ctx, State, valid_snapshot_id
from fspd.emulator.store import Snapshot, merged_indexes, new_snapshot_id
from fspd.emulator.synthetic import BLOCK_SIZE
from fspd.emulator.tokens import block_binding, page_binding

JSON = "application/json"
_KMS_RE = re.compile(r"arn:aws[a-z\-]*:kms:.*:[0-9]{12}:key/.*")


def json_response(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(body).encode(), status=status, content_type=JSON)


def _int(value: str | None, name: str, *, lo: int | None = None, hi: int | None = None,
         reason: str = "INVALID_PARAMETER_VALUE") -> int | None:
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        raise errors.validation(f"{name} must be an integer.", reason) from None
    if (lo is not None and n < lo) or (hi is not None and n > hi):
        rng = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise errors.validation(f"{name} must be {rng}.", reason)
    return n


def _describe(snap: Snapshot) -> dict[str, Any]:
    out: dict[str, Any] = {
        "SnapshotId": snap.id, "OwnerId": snap.owner_id, "Status": snap.status(),
        "StartTime": snap.start_time, "VolumeSize": snap.volume_size,
        "BlockSize": BLOCK_SIZE, "SseType": snap.sse_type,
    }
    if snap.tags:
        out["Tags"] = snap.tags
    if snap.description is not None:
        out["Description"] = snap.description
    if snap.parent is not None:
        out["ParentSnapshotId"] = snap.parent.id
    if snap.kms_key_arn:
        out["KmsKeyArn"] = snap.kms_key_arn
    return out


def default_kms_arn(region: str, account: str) -> str:
    key = uuid.uuid5(uuid.NAMESPACE_URL, f"aws/ebs/{region}/{account}")
    return f"arn:aws:kms:{region}:{account}:key/{key}"


def _check_tags(tags: Any) -> list[dict[str, str]]:
    if tags is None:
        return []
    if not isinstance(tags, list) or len(tags) > 50:
        raise errors.validation("Tags must be a list of at most 50 tags.", "INVALID_TAG")
    out = []
    for tag in tags:
        if not isinstance(tag, dict):
            raise errors.validation("Each tag needs a Key and a Value.", "INVALID_TAG")
        key, value = tag.get("Key"), tag.get("Value", "")
        if not isinstance(key, str) or not 1 <= len(key) <= 127 or key.startswith("aws:"):
            raise errors.validation(f"Tag key {key!r} is not valid.", "INVALID_TAG")
        if not isinstance(value, str) or len(value) > 255:
            raise errors.validation(f"Tag value for {key!r} is not valid.", "INVALID_TAG")
        out.append({"Key": key, "Value": value})
    return out


async def start_snapshot(state: State, ctx: Ctx, request: web.Request) -> web.Response:
    try:
        body = json.loads(await request.read() or b"{}")
    except ValueError:
        raise errors.validation("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise errors.validation("The request body must be a JSON object.")
    cfg = state.config
    size = body.get("VolumeSize")
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 65536:
        raise errors.validation("VolumeSize must be an integer between 1 and 65536 GiB.",
                                "INVALID_VOLUME_SIZE")
    timeout = body.get("Timeout", 60)
    if isinstance(timeout, bool) or not isinstance(timeout, int) or not 10 <= timeout <= 4320:
        raise errors.validation("Timeout must be between 10 and 4320 minutes.")
    encrypted = body.get("Encrypted", False)
    if not isinstance(encrypted, bool):
        raise errors.validation("Encrypted must be a boolean.")
    kms = body.get("KmsKeyArn")
    parent_id = body.get("ParentSnapshotId")
    description = body.get("Description")
    if description is not None and (not isinstance(description, str)
                                    or not 1 <= len(description) <= 255):
        raise errors.validation("Description must be 1 to 255 characters.")
    tags = _check_tags(body.get("Tags"))
    token = body.get("ClientToken")
    if token is not None and (not isinstance(token, str) or not 1 <= len(token) <= 255
                              or any(c.isspace() for c in token)):
        raise errors.validation("ClientToken is not valid.")
    if parent_id is not None and "Encrypted" in body:
        raise errors.validation(
            "Encrypted cannot be specified with ParentSnapshotId: a child snapshot takes its "
            "parent's encryption.")
    if kms is not None:
        if not encrypted:
            raise errors.validation("KmsKeyArn requires Encrypted to be true.",
                                    "INVALID_CUSTOMER_KEY")
        if not isinstance(kms, str) or len(kms) > 2048 or not _KMS_RE.match(kms):
            raise errors.validation("KmsKeyArn is not a valid KMS key ARN.",
                                    "INVALID_CUSTOMER_KEY")

    params = (size, parent_id, tuple((t["Key"], t["Value"]) for t in tags), description,
              encrypted, kms, timeout)
    if token is not None:
        seen = state.store.client_tokens.get((ctx.region, ctx.account, token))
        if seen is not None:
            if seen[0] != params:
                raise errors.ApiError(409, "ConflictException",
                                      "The ClientToken was already used with other parameters.")
            snap = state.store.get(ctx.region, seen[1])
            if snap is not None:
                return json_response(_describe(snap), 201)

    parent = None
    if parent_id is not None:
        if not isinstance(parent_id, str):
            raise errors.validation("ParentSnapshotId must be a string.", "INVALID_SNAPSHOT_ID")
        parent = state.snapshot(ctx, parent_id)
        if parent.status() != "completed":
            raise errors.validation(f"The parent snapshot '{parent_id}' is not completed.",
                                    "INVALID_SNAPSHOT_ID")
        if size < parent.volume_size:
            raise errors.validation(
                f"VolumeSize {size} is smaller than the parent's {parent.volume_size} GiB.",
                "INVALID_VOLUME_SIZE")
    pending = sum(1 for s in state.store.all(ctx.region)
                  if s.owner_id == ctx.account and s.status() == "pending")
    if pending >= cfg["pending_limit"]:
        raise errors.ApiError(400, "ConcurrentLimitExceededException",
                              f"You have reached the limit of {cfg['pending_limit']} pending "
                              "snapshots.")

    sse = "none"
    if parent is not None and parent.encrypted:
        encrypted, kms, sse = True, parent.kms_key_arn, parent.sse_type
    elif encrypted:
        sse = "sse-kms" if kms else "sse-ebs"
        kms = kms or default_kms_arn(ctx.region, ctx.account)
    snap = state.store.add(Snapshot(
        id=new_snapshot_id(), region=ctx.region, owner_id=ctx.account, volume_size=size,
        parent=parent, encrypted=encrypted, kms_key_arn=kms, sse_type=sse, tags=tags,
        description=description, timeout_s=timeout * cfg["timeout_unit_seconds"],
    ))
    if token is not None:
        state.store.client_tokens[(ctx.region, ctx.account, token)] = (params, snap.id)
    return json_response(_describe(snap), 201)


def _writable(snap: Snapshot) -> None:
    status = snap.status()
    if status == "error":
        raise errors.validation(f"The snapshot '{snap.id}' timed out and was cancelled.",
                                "WRITE_REQUEST_TIMEOUT")
    if status != "pending" or snap.complete_requested is not None:
        raise errors.validation(f"The snapshot '{snap.id}' is not pending; blocks cannot be "
                                "written to it.", "INVALID_SNAPSHOT_ID")


def _block_index(snap: Snapshot, text: str) -> int:
    index = _int(text, "BlockIndex", lo=0, reason="INVALID_BLOCK")
    assert index is not None
    if index >= snap.nblocks:
        raise errors.validation(
            f"Block index {index} is out of range for a {snap.volume_size} GiB volume.",
            "INVALID_BLOCK")
    return index


async def put_snapshot_block(state: State, ctx: Ctx, request: web.Request) -> web.Response:
    snap = state.snapshot(ctx, request.match_info["snapshot_id"])
    _writable(snap)
    index = _block_index(snap, request.match_info["index"])
    headers = request.headers
    length = _int(headers.get("x-amz-Data-Length"), "DataLength")
    if length is None:
        raise errors.validation("The x-amz-Data-Length header is required.")
    if length != BLOCK_SIZE:
        raise errors.validation(f"DataLength must be {BLOCK_SIZE} bytes, not {length}.")
    checksum = headers.get("x-amz-Checksum")
    algorithm = headers.get("x-amz-Checksum-Algorithm")
    if not checksum:
        raise errors.validation("The x-amz-Checksum header is required.")
    if algorithm != "SHA256":
        raise errors.validation("ChecksumAlgorithm must be SHA256.")
    progress = _int(headers.get("x-amz-Progress"), "Progress", lo=0, hi=100)
    key = (snap.id, index)
    if key in state.inflight:
        raise errors.validation(f"Block {index} is already being written.",
                                "CONFLICTING_BLOCK_UPDATE")
    state.inflight.add(key)
    try:
        data = await request.read()
        state.stats.bytes_in += len(data)
        if len(data) != length:
            raise errors.validation("Failed to read block data")
        digest = request.get("body_sha256")
        if digest is None:
            digest = await asyncio.to_thread(_sha256, data)
        if base64.b64encode(digest).decode() != checksum:
            raise errors.validation("The checksum of the block data does not match "
                                    "x-amz-Checksum.")
        _writable(snap)  # it may have timed out while the body arrived
        snap.write(index, data, digest)
    finally:
        state.inflight.discard(key)
    if progress is not None:
        snap.progress = max(snap.progress, progress)
    return web.Response(status=201, content_type=JSON, body=b"{}", headers={
        "x-amz-Checksum": checksum, "x-amz-Checksum-Algorithm": "SHA256"})


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


async def complete_snapshot(state: State, ctx: Ctx, request: web.Request) -> web.Response:
    snap = state.snapshot(ctx, request.match_info["snapshot_id"])
    status = snap.status()
    if snap.synthetic is not None or snap.complete_requested is not None:
        return json_response({"Status": status}, 202)
    if status == "error":
        raise errors.validation(f"The snapshot '{snap.id}' timed out and was cancelled.",
                                "WRITE_REQUEST_TIMEOUT")
    headers = request.headers
    count = _int(headers.get("x-amz-ChangedBlocksCount"), "ChangedBlocksCount", lo=0)
    if count is None:
        raise errors.validation("The x-amz-ChangedBlocksCount header is required.")
    written = len(snap.written)
    if count != written:
        raise errors.validation(
            f"ChangedBlocksCount {count} does not match the {written} blocks written to the "
            "snapshot.")
    checksum = headers.get("x-amz-Checksum")
    algorithm = headers.get("x-amz-Checksum-Algorithm")
    method = headers.get("x-amz-Checksum-Aggregation-Method")
    if checksum is not None:
        if algorithm != "SHA256":
            raise errors.validation("ChecksumAlgorithm must be SHA256.")
        if method != "LINEAR":
            raise errors.validation("ChecksumAggregationMethod must be LINEAR.")
        aggregate = hashlib.sha256(b"".join(snap.digests_ascending())).digest()
        if base64.b64encode(aggregate).decode() != checksum:
            raise errors.validation("The aggregate checksum does not match the blocks "
                                    "written to the snapshot.")
    elif algorithm is not None or method is not None:
        raise errors.validation("x-amz-Checksum is required with a checksum algorithm.")
    snap.complete_requested = time.time()
    snap.completion_delay = state.config["completion_delay"]
    return json_response({"Status": snap.status()}, 202)


def _paging(state: State, ctx: Ctx, request: web.Request, second: str,
            first: str | None, limit: int) -> tuple[int, int, int]:
    """(start index, page stop, max results) of the page asked for."""
    q = request.query
    max_results = _int(q.get("maxResults"), "MaxResults", lo=100, hi=10000)
    start = _int(q.get("startingBlockIndex"), "StartingBlockIndex", lo=0) or 0
    token = q.get("pageToken")
    if token is not None:
        value = state.tokens.check(page_binding(ctx.region, ctx.op, second, first), token)
        if value is None:
            raise errors.validation("The page token is not valid or has expired.",
                                    "INVALID_PAGE_TOKEN")
        start = value
    stop = min(limit, start + state.config["page_scan_blocks"])
    return start, stop, max_results or 10000


def _page_body(state: State, ctx: Ctx, second: str, first: str | None, limit: int,
               stop: int, items: list[int], max_results: int, volume: int) -> dict[str, Any]:
    now = time.time()
    body: dict[str, Any] = {
        "ExpiryTime": now + state.config["block_token_ttl"],
        "VolumeSize": volume, "BlockSize": BLOCK_SIZE,
    }
    next_start = items[-1] + 1 if len(items) >= max_results else stop
    if next_start < limit:
        body["NextToken"] = state.tokens.make(
            page_binding(ctx.region, ctx.op, second, first), next_start,
            now + state.config["page_token_ttl"])
    return body


async def list_snapshot_blocks(state: State, ctx: Ctx, request: web.Request) -> web.Response:
    snap = state.snapshot(ctx, request.match_info["snapshot_id"], readable=True)
    start, stop, max_results = _paging(state, ctx, request, snap.id, None, snap.nblocks)
    items: list[int] = []
    for index in merged_indexes(snap.lineage(), start, stop):
        items.append(index)
        if len(items) >= max_results:
            break
    body = _page_body(state, ctx, snap.id, None, snap.nblocks, stop, items, max_results,
                      snap.volume_size)
    expiry = float(body["ExpiryTime"])
    binding = block_binding(ctx.region, snap.id)
    make = state.tokens.make
    body["Blocks"] = [{"BlockIndex": i, "BlockToken": make(binding, i, expiry)} for i in items]
    return json_response(body)


async def list_changed_blocks(state: State, ctx: Ctx, request: web.Request) -> web.Response:
    second = state.snapshot(ctx, request.match_info["snapshot_id"], readable=True)
    first_id = request.query.get("firstSnapshotId")
    first = None
    if first_id is not None:
        if not valid_snapshot_id(first_id):
            raise errors.validation(f"The snapshot ID '{first_id[:80]}' is not valid.",
                                    "INVALID_SNAPSHOT_ID")
        first = state.snapshot(ctx, first_id, readable=True)
    chain2 = second.lineage()
    if first is None:
        writers, limit = chain2, second.nblocks
    else:
        chain1 = first.lineage()
        ids1 = {s.id for s in chain1}
        common = next((s for s in chain2 if s.id in ids1), None)
        if common is None:
            raise errors.validation(
                f"The snapshots '{first.id}' and '{second.id}' are not related.",
                "UNRELATED_SNAPSHOTS")
        writers = (chain2[:chain2.index(common)]
                   + [s for s in chain1[:[x.id for x in chain1].index(common.id)]
                      if s.id not in {w.id for w in chain2}])
        limit = max(first.nblocks, second.nblocks)
    start, stop, max_results = _paging(state, ctx, request, second.id, first_id, limit)
    items: list[int] = []
    for index in merged_indexes(writers, start, stop):
        items.append(index)
        if len(items) >= max_results:
            break
    body = _page_body(state, ctx, second.id, first_id, limit, stop, items, max_results,
                      second.volume_size)
    expiry = float(body["ExpiryTime"])
    b1 = block_binding(ctx.region, first.id) if first is not None else b""
    b2 = block_binding(ctx.region, second.id)
    make = state.tokens.make
    changed = []
    for index in items:
        entry: dict[str, Any] = {"BlockIndex": index}
        if first is not None and first.has_block(index):
            entry["FirstBlockToken"] = make(b1, index, expiry)
        if second.has_block(index):
            entry["SecondBlockToken"] = make(b2, index, expiry)
        changed.append(entry)
    body["ChangedBlocks"] = changed
    return json_response(body)


async def get_snapshot_block(state: State, ctx: Ctx, request: web.Request) -> web.Response:
    snap = state.snapshot(ctx, request.match_info["snapshot_id"], readable=True)
    index = _block_index(snap, request.match_info["index"])
    token = request.query.get("blockToken")
    if not token:
        raise errors.validation("The blockToken parameter is required.", "INVALID_BLOCK_TOKEN")
    if state.tokens.check(block_binding(ctx.region, snap.id), token) != index:
        raise errors.validation("The block token is not valid for this block or has expired.",
                                "INVALID_BLOCK_TOKEN")
    found = snap.block(index)
    if found is None:
        raise errors.validation(f"Block {index} does not exist in the snapshot.",
                                "INVALID_BLOCK")
    data, _digest, checksum = found
    faults = state.faults
    if faults.settings["corrupt_rate"] > 0 and faults.applies(ctx.op, ctx.region) \
            and faults.roll("corrupt"):
        spoiled = bytearray(data)
        at = faults.rng.randrange(BLOCK_SIZE)
        spoiled[at] ^= 0xFF
        data = bytes(spoiled)
    state.stats.bytes_out += len(data)
    return web.Response(body=data, content_type="application/octet-stream", headers={
        "x-amz-Data-Length": str(len(data)), "x-amz-Checksum": checksum,
        "x-amz-Checksum-Algorithm": "SHA256"})


HANDLERS = {
    "StartSnapshot": start_snapshot,
    "PutSnapshotBlock": put_snapshot_block,
    "CompleteSnapshot": complete_snapshot,
    "ListSnapshotBlocks": list_snapshot_blocks,
    "ListChangedBlocks": list_changed_blocks,
    "GetSnapshotBlock": get_snapshot_block,
}
