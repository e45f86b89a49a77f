"""The physical floor as a whole process, for the whole-process rows: what ``fspd download``,
``upload`` and ``copy`` must do at the least, started the way a command starts (a new Python,
its imports, its own connections), so its CPU-s and wall compare with fspd's as typed.

``python tests/bench/floor_proc.py SPEC_JSON``; SPEC has ``op`` (download | upload | copy),
``base`` (the emulator URL), ``cafile`` (or null), and per op: ``snapshot``, ``get_headers``
(a well-formed SigV4 header set, made by the parent: the emulator checks the form, not the
signature, so the floor pays nothing for signing), ``out`` and ``size`` (download), ``source``
and ``blocks`` (upload), ``target`` and ``put_headers`` (upload, copy).

Only aiohttp and the standard library are imported: a floor does not load botocore.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import ssl
import sys
from typing import Any
from urllib.parse import quote

import aiohttp

BLOCK = 524288
CONCURRENCY = 32


async def _tokens(session: aiohttp.ClientSession, spec: dict[str, Any]) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    token = None
    while True:
        url = f"{spec['base']}/snapshots/{spec['snapshot']}/blocks?maxResults=10000"
        if token:
            url += f"&pageToken={quote(token, safe='')}"
        async with session.get(url, headers=spec["get_headers"]) as resp:
            page = await resp.json()
        out += [(b["BlockIndex"], quote(b["BlockToken"], safe="")) for b in page["Blocks"]]
        token = page.get("NextToken")
        if not token:
            return out


async def _pool(items: list[Any], work: Any) -> None:
    it = iter(items)

    async def worker() -> None:
        for item in it:
            await work(item)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def main(spec: dict[str, Any]) -> None:
    context = ssl.create_default_context(cafile=spec["cafile"]) if spec.get("cafile") else None
    connector = aiohttp.TCPConnector(limit=CONCURRENCY, ssl=context if context else True)
    base, op = spec["base"], spec["op"]
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:

        async def get(index: int, token: str) -> bytes:
            url = f"{base}/snapshots/{spec['snapshot']}/blocks/{index}?blockToken={token}"
            async with session.get(url, headers=spec["get_headers"]) as resp:
                data = await resp.read()
                want = base64.b64decode(resp.headers["x-amz-Checksum"])
            if hashlib.sha256(data).digest() != want:
                raise RuntimeError(f"floor: block {index} corrupt")
            return data

        async def put(index: int, data: bytes) -> None:
            headers = dict(spec["put_headers"], **{
                "x-amz-Data-Length": str(len(data)), "x-amz-Checksum-Algorithm": "SHA256",
                "x-amz-Checksum": base64.b64encode(hashlib.sha256(data).digest()).decode()})
            url = f"{base}/snapshots/{spec['target']}/blocks/{index}"
            async with session.put(url, data=data, headers=headers) as resp:
                if resp.status != 201:
                    raise RuntimeError(f"floor: put {index}: {resp.status} {await resp.text()}")

        if op == "download":
            fd = os.open(spec["out"], os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o600)
            os.ftruncate(fd, spec["size"])

            async def fetch(item: tuple[int, str]) -> None:
                os.pwrite(fd, await get(*item), item[0] * BLOCK)

            try:
                await _pool(await _tokens(session, spec), fetch)
            finally:
                os.close(fd)
        elif op == "upload":
            fd = os.open(spec["source"], os.O_RDONLY)

            async def send(index: int) -> None:
                await put(index, os.pread(fd, BLOCK, index * BLOCK))

            try:
                await _pool(list(range(spec["blocks"])), send)
            finally:
                os.close(fd)
        elif op == "copy":
            async def move(item: tuple[int, str]) -> None:
                await put(item[0], await get(*item))

            await _pool(await _tokens(session, spec), move)
        else:
            raise SystemExit(f"unknown op {op!r}")


if __name__ == "__main__":
    try:
        import uvloop  # the loop fspd runs on: the floor gets the same advantage
        uvloop.run(main(json.loads(sys.argv[1])))
    except ImportError:
        asyncio.run(main(json.loads(sys.argv[1])))
