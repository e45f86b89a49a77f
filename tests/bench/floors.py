"""The physical floors: the least work that moves the same blocks, done with raw aiohttp and
plain system calls. fspd's costs are reported as ratios to these, measured in the same run."""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
from typing import Any
from urllib.parse import quote

import aiohttp
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from fspd.blocks import BLOCK_SIZE, from_b64, to_b64

CREDS = Credentials("AKIAFSPDBENCH0000001", "bench-secret")


def static_auth(url: str, region: str) -> dict[str, str]:
    """One well-formed SigV4 header, reused: the emulator checks its form, not its signature
    (no keys configured), so the floor pays nothing for signing."""
    request = AWSRequest(method="GET", url=url,
                         headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    SigV4Auth(CREDS, "ebs", region).add_auth(request)
    return dict(request.headers.items())


async def list_tokens(session: aiohttp.ClientSession, base: str, snapshot_id: str,
                      region: str, limit: int) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    token = None
    while len(out) < limit:
        url = f"{base}/snapshots/{snapshot_id}/blocks?maxResults=10000"
        if token:
            url += f"&pageToken={token}"
        async with session.get(url, headers=static_auth(url, region)) as resp:
            page = await resp.json()
        out += [(b["BlockIndex"], quote(b["BlockToken"], safe="")) for b in page["Blocks"]]
        token = page.get("NextToken")
        if token:
            token = quote(token, safe="")
        if not token:
            break
    return out[:limit]


def _session(concurrency: int, ssl_context: ssl.SSLContext | None = None
             ) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency, ssl=ssl_context or True),
        auto_decompress=False)


async def _pool(items: list[Any], concurrency: int, work: Any) -> None:
    queue: asyncio.Queue[Any] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)

    async def worker() -> None:
        while not queue.empty():
            await work(queue.get_nowait())

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def get_verified(session: aiohttp.ClientSession, base: str, snapshot_id: str,
                       headers: dict[str, str], index: int, token: str) -> bytes:
    """One raw GetSnapshotBlock, its body checked against its SHA-256."""
    url = f"{base}/snapshots/{snapshot_id}/blocks/{index}?blockToken={token}"
    async with session.get(url, headers=headers) as resp:
        data = await resp.read()
        want = from_b64(resp.headers["x-amz-Checksum"])
    if hashlib.sha256(data).digest() != want:
        raise RuntimeError(f"floor: block {index} corrupt")
    return data


async def download_floor(base: str, region: str, snapshot_id: str,
                         tokens: list[tuple[int, str]], fd: int | None,
                         concurrency: int = 32, ssl_context: ssl.SSLContext | None = None
                         ) -> None:
    """GET each block, verify its SHA-256, pwrite it (if ``fd``)."""
    headers = static_auth(f"{base}/snapshots/{snapshot_id}/blocks/0", region)
    async with _session(concurrency, ssl_context) as session:
        async def one(item: tuple[int, str]) -> None:
            data = await get_verified(session, base, snapshot_id, headers, *item)
            if fd is not None:
                os.pwrite(fd, data, item[0] * BLOCK_SIZE)

        await _pool(tokens, concurrency, one)


async def put_floor(base: str, region: str, snapshot_id: str, blocks: list[int],
                    read: Any, concurrency: int = 32,
                    ssl_context: ssl.SSLContext | None = None) -> None:
    """For each block: ``read(index)`` (pread, or a GET), SHA-256, raw PUT."""
    headers = static_auth(f"{base}/snapshots/{snapshot_id}/blocks/0", region)
    async with _session(concurrency, ssl_context) as session:
        async def one(index: int) -> None:
            data = await read(session, index)
            checksum = to_b64(hashlib.sha256(data).digest())
            h = dict(headers, **{"x-amz-Data-Length": str(BLOCK_SIZE),
                                 "x-amz-Checksum": checksum,
                                 "x-amz-Checksum-Algorithm": "SHA256"})
            url = f"{base}/snapshots/{snapshot_id}/blocks/{index}"
            async with session.put(url, data=data, headers=h) as resp:
                if resp.status != 201:
                    raise RuntimeError(f"floor: put {index}: {resp.status} {await resp.text()}")

        await _pool(blocks, concurrency, one)


async def movetos3_floor(base: str, region: str, snapshot_id: str,
                         tokens: list[tuple[int, str]], s3_url: str, bucket: str,
                         level: int, window: int = 64, concurrency: int = 32) -> None:
    """GET and verify each block, zstd-compress each 64-block window as one frame, SHA-256
    the frame (S3's checksum) and PUT it raw to S3: movetos3's work without its bookkeeping."""
    import zstandard

    headers = static_auth(f"{base}/snapshots/{snapshot_id}/blocks/0", region)
    compressor = zstandard.ZstdCompressor(level=level)
    async with _session(concurrency) as session:
        for start in range(0, len(tokens), window):
            chunk = tokens[start:start + window]
            blocks = await asyncio.gather(*(get_verified(session, base, snapshot_id, headers,
                                                         *t) for t in chunk))
            body = compressor.compress(b"".join(blocks))
            checksum = to_b64(hashlib.sha256(body).digest())
            url = f"{s3_url}/{bucket}/floor/{chunk[0][0]:012d}.zst"
            request = AWSRequest(method="PUT", url=url, headers={
                "x-amz-checksum-sha256": checksum, "X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
            S3SigV4Auth(CREDS, "s3", region).add_auth(request)  # once per 32 MiB object
            async with session.put(url, data=body, headers=dict(request.headers.items())) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"floor: S3 PUT {url}: {resp.status} "
                                       f"{await resp.text()}")
