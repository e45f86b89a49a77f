"""Shared helpers for the emulator tests: block bytes, checksums, and error inspection.

Everything here follows the documented EBS Direct API (see
/work/shared/reference/ebs-direct-api.md), never the emulator's implementation.
"""

from __future__ import annotations

import base64
import hashlib
import random
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import ClientError

BLOCK_SIZE = 524_288
BLOCKS_PER_GIB = 2048
ZERO_BLOCK = bytes(BLOCK_SIZE)
ZERO_BLOCK_CHECKSUM = "B4VNL+8pega6gWheZgwzLeNtXRjVRpJ9MNqtbX/aFUE="

# Every Reason the service model lets a ValidationException carry.
VALIDATION_REASONS = frozenset({
    "INVALID_CUSTOMER_KEY", "INVALID_PAGE_TOKEN", "INVALID_BLOCK_TOKEN", "INVALID_GRANT_TOKEN",
    "INVALID_SNAPSHOT_ID", "UNRELATED_SNAPSHOTS", "INVALID_BLOCK", "INVALID_CONTENT_ENCODING",
    "INVALID_TAG", "INVALID_DEPENDENCY_REQUEST", "INVALID_PARAMETER_VALUE", "INVALID_VOLUME_SIZE",
    "CONFLICTING_BLOCK_UPDATE", "INVALID_IMAGE_ID", "WRITE_REQUEST_TIMEOUT",
})
THROTTLE_CODES = frozenset({"RequestThrottledException", "ThrottlingException"})
THROTTLE_REASONS = frozenset({"ACCOUNT_THROTTLED", "RESOURCE_LEVEL_THROTTLE",
                              "DEPENDENCY_REQUEST_THROTTLED"})

TEST_REGIONS = ("us-east-1", "us-west-2", "eu-west-1", "ap-southeast-2")


def block(seed: int | str) -> bytes:
    """A deterministic, non-zero, 512 KiB block that differs for every seed."""
    rng = random.Random(f"fspd-block-{seed}")
    return rng.randbytes(BLOCK_SIZE)


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def checksum(data: bytes) -> str:
    """base64(SHA-256(data)): the x-amz-Checksum of a block."""
    return base64.b64encode(digest(data)).decode("ascii")


def linear_checksum(blocks: dict[int, bytes]) -> str:
    """The LINEAR aggregate: SHA-256 over the raw 32-byte digests of every written block, in
    ascending index order, base64."""
    h = hashlib.sha256()
    for index in sorted(blocks):
        h.update(digest(blocks[index]))
    return base64.b64encode(h.digest()).decode("ascii")


def error_code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code"))


def error_status(err: ClientError) -> int:
    return int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def error_reason(err: ClientError) -> str | None:
    """The Reason field of an EBS error body ({"Message": ..., "Reason": ...})."""
    reason = err.response.get("Reason")
    if reason is None:
        reason = err.response.get("Error", {}).get("Reason")
    return reason


def assert_error(err: ClientError, code: str | Iterable[str], status: int | Iterable[int],
                 reason: str | Iterable[str] | None = None) -> None:
    codes = {code} if isinstance(code, str) else set(code)
    statuses = {status} if isinstance(status, int) else set(status)
    got = (error_code(err), error_status(err), error_reason(err))
    assert got[0] in codes, f"code {got} not in {codes}"
    assert got[1] in statuses, f"status {got} not in {statuses}"
    if reason is not None:
        reasons = {reason} if isinstance(reason, str) else set(reason)
        assert got[2] in reasons, f"reason {got} not in {reasons}"


async def expect_error(awaitable: Any, code: str | Iterable[str], status: int | Iterable[int],
                       reason: str | Iterable[str] | None = None) -> ClientError:
    """Await a botocore call that must fail with the given error; return the error."""
    with pytest.raises(ClientError) as info:
        result = await awaitable
        # A success with a streaming body would leak a connection: close it before failing.
        body = result.get("BlockData") if isinstance(result, dict) else None
        if body is not None:
            body.close()
    assert_error(info.value, code, status, reason)
    return info.value


async def put(ebs: Any, snapshot_id: str, index: int, data: bytes, **extra: Any) -> dict:
    return await ebs.put_snapshot_block(
        SnapshotId=snapshot_id, BlockIndex=index, BlockData=data, DataLength=len(data),
        Checksum=checksum(data), ChecksumAlgorithm="SHA256", **extra)


async def complete(ebs: Any, snapshot_id: str, written: dict[int, bytes] | None = None,
                   count: int | None = None, aggregate: bool = True) -> dict:
    """CompleteSnapshot with ChangedBlocksCount (and the LINEAR aggregate) of ``written``."""
    written = written or {}
    kwargs: dict[str, Any] = {
        "SnapshotId": snapshot_id,
        "ChangedBlocksCount": len(written) if count is None else count,
    }
    if aggregate and written:
        kwargs.update(Checksum=linear_checksum(written), ChecksumAlgorithm="SHA256",
                      ChecksumAggregationMethod="LINEAR")
    return await ebs.complete_snapshot(**kwargs)


async def make_snapshot(ebs: Any, blocks: dict[int, bytes], volume_size: int = 1,
                        **start_kwargs: Any) -> str:
    """Start, put ``blocks``, complete (with LINEAR checksum); return the snapshot id."""
    started = await ebs.start_snapshot(VolumeSize=volume_size, **start_kwargs)
    sid = started["SnapshotId"]
    for index, data in blocks.items():
        await put(ebs, sid, index, data)
    done = await complete(ebs, sid, blocks)
    assert done["Status"] == "completed"
    return sid


async def read_block(ebs: Any, snapshot_id: str, index: int, token: str) -> tuple[bytes, dict]:
    """GetSnapshotBlock; returns (body bytes, response without the body)."""
    resp = await ebs.get_snapshot_block(SnapshotId=snapshot_id, BlockIndex=index,
                                        BlockToken=token)
    async with resp["BlockData"] as stream:
        data = await stream.read()
    return data, {k: v for k, v in resp.items() if k != "BlockData"}


async def list_all(ebs: Any, snapshot_id: str, **kwargs: Any) -> tuple[list[dict], list[dict]]:
    """Walk ListSnapshotBlocks to the end; return (blocks, pages)."""
    blocks: list[dict] = []
    pages: list[dict] = []
    token: str | None = None
    for _ in range(100_000):
        args = dict(kwargs)
        if token:
            args["NextToken"] = token
        page = await ebs.list_snapshot_blocks(SnapshotId=snapshot_id, **args)
        pages.append(page)
        blocks.extend(page.get("Blocks", []))
        token = page.get("NextToken")
        if not token:
            return blocks, pages
    raise AssertionError("ListSnapshotBlocks never ended")


async def changed_all(ebs: Any, second: str, first: str | None = None,
                      **kwargs: Any) -> list[dict]:
    """Walk ListChangedBlocks to the end; return every ChangedBlocks entry."""
    out: list[dict] = []
    token: str | None = None
    if first is not None:
        kwargs["FirstSnapshotId"] = first
    for _ in range(100_000):
        args = dict(kwargs)
        if token:
            args["NextToken"] = token
        page = await ebs.list_changed_blocks(SecondSnapshotId=second, **args)
        out.extend(page.get("ChangedBlocks", []))
        token = page.get("NextToken")
        if not token:
            return out
    raise AssertionError("ListChangedBlocks never ended")


async def tokens(ebs: Any, snapshot_id: str) -> dict[int, str]:
    """{BlockIndex: BlockToken} of every listed block."""
    blocks, _ = await list_all(ebs, snapshot_id)
    return {b["BlockIndex"]: b["BlockToken"] for b in blocks}


def client_config(**overrides: Any) -> Config:
    """Like tests/conftest.py's client_config, but truly without retries: botocore's
    ``max_attempts`` counts RETRIES (max_attempts=1 means two attempts), so this sets
    ``total_max_attempts=1``: exactly one attempt per call."""
    base: dict[str, Any] = {"retries": {"total_max_attempts": 1, "mode": "standard"},
                            "connect_timeout": 5, "read_timeout": 30}
    base.update(overrides)
    return Config(**base)


_SESSION: Any = None


def _session() -> Any:
    """One botocore session for all helper clients: it caches the loaded service models
    (EC2's takes ~0.1-0.2 s to load), so each new client costs milliseconds."""
    global _SESSION
    if _SESSION is None:
        _SESSION = get_session()
    return _SESSION


@asynccontextmanager
async def aws_client(service: str, url: str, region: str = "us-east-1",
                     access_key: str | None = None, secret_key: str | None = None,
                     **config: Any) -> AsyncIterator[Any]:
    """An aiobotocore client on ``url``; closed on exit (filterwarnings=error)."""
    kwargs: dict[str, Any] = {}
    if access_key is not None:
        kwargs["aws_access_key_id"] = access_key
        kwargs["aws_secret_access_key"] = secret_key or "some-secret-key-0000000000000000000000"
    async with _session().create_client(
        service, region_name=region, endpoint_url=url, config=client_config(**config), **kwargs
    ) as client:
        yield client
