"""GetSnapshotBlock / PutSnapshotBlock, the two calls on the per-block hot path.

Two transports behind one interface:

* :class:`SignedHttpBlockApi` (the default, ``fast_path = true``) signs each request with
  fspd's SigV4 signer (fspd/sigv4.py, tested equal to botocore's) and sends it with aiohttp.
  botocore's per-request machinery (event hooks, model-driven serialisation and parsing, and
  on plain HTTP a SHA-256 of every PUT body for the signature) costs more CPU than the
  block's own checksum; see tests/bench/.
* :class:`BotocoreBlockApi` goes through the aiobotocore client, for comparison and as a
  fallback when a deployment needs botocore's request pipeline (custom endpoints, proxies).

Both return/raise the same things: bytes plus the server's checksum, or :class:`ApiError`.
"""

from __future__ import annotations

import json
import ssl
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import aiohttp
import yarl
from botocore.exceptions import ClientError
from botocore.httpsession import get_cert_path

from fspd.retry import ApiError, Unreachable, endpoint_answered
from fspd.sigv4 import Signer


class BlockApi(Protocol):
    async def get_block(self, snapshot_id: str, index: int, token: str) -> tuple[bytes, str]:
        """Return (block bytes, base64 SHA-256 the server sent). Bytes are NOT verified."""
        ...

    async def put_block(self, snapshot_id: str, index: int, data: bytes, checksum: str,
                        progress: int | None = None) -> None: ...

    async def close(self) -> None: ...


class BotocoreBlockApi:
    def __init__(self, ebs_client: Any) -> None:
        self._ebs = ebs_client

    async def get_block(self, snapshot_id: str, index: int, token: str) -> tuple[bytes, str]:
        try:
            resp = await self._ebs.get_snapshot_block(
                SnapshotId=snapshot_id, BlockIndex=index, BlockToken=token)
            async with resp["BlockData"] as stream:
                data = await stream.read()
        except ClientError as exc:
            raise ApiError.from_client_error(exc, "GetSnapshotBlock") from None
        return data, resp.get("Checksum", "")

    async def put_block(self, snapshot_id: str, index: int, data: bytes, checksum: str,
                        progress: int | None = None) -> None:
        params: dict[str, Any] = {
            "SnapshotId": snapshot_id, "BlockIndex": index, "BlockData": data,
            "DataLength": len(data), "Checksum": checksum, "ChecksumAlgorithm": "SHA256",
        }
        if progress is not None:
            params["Progress"] = progress
        try:
            await self._ebs.put_snapshot_block(**params)
        except ClientError as exc:
            raise ApiError.from_client_error(exc, "PutSnapshotBlock") from None

    async def close(self) -> None:  # the client belongs to AwsClients
        return None


class SignedHttpBlockApi:
    """Signs with botocore (credentials refresh as usual) and sends with one aiohttp session
    whose connection pool is as large as the requests in flight."""

    def __init__(self, endpoint_url: str, region: str, credentials: Any, *,
                 max_connections: int, connect_timeout: float, read_timeout: float,
                 ca_bundle: str | None = None) -> None:
        self._base = endpoint_url.rstrip("/")
        parts = urlsplit(self._base)
        default_port = {"http": 80, "https": 443}.get(parts.scheme)
        # The Host header as botocore signs it: the port only when it is not the default.
        host = parts.hostname or ""
        self._host = host if parts.port in (None, default_port) else f"{host}:{parts.port}"
        self._prefix = parts.path.rstrip("/")
        self._signer = Signer(region, "ebs")
        self._credentials = credentials
        self._seen = False
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections, limit_per_host=max_connections,
                                           ttl_dns_cache=300,
                                           ssl=_tls_context(parts.scheme, ca_bundle)),
            # A deadline per request (one timer), rather than per socket read (a timer
            # rescheduled for every chunk of every 512 KiB body).
            timeout=aiohttp.ClientTimeout(total=read_timeout, sock_connect=connect_timeout),
            auto_decompress=False, skip_auto_headers=("User-Agent", "Content-Type"),
        )

    @classmethod
    async def for_client(cls, ebs_client: Any, credentials: Any, **kwargs: Any
                         ) -> SignedHttpBlockApi:
        return cls(ebs_client.meta.endpoint_url, ebs_client.meta.region_name, credentials,
                   **kwargs)

    async def _sign(self, method: str, path: str, query: dict[str, str],
                    headers: dict[str, str]) -> dict[str, str]:
        creds = await self._credentials.get_frozen_credentials()
        return self._signer.sign(method, self._host, self._prefix + path, query, headers,
                                 creds.access_key, creds.secret_key, creds.token)

    async def get_block(self, snapshot_id: str, index: int, token: str) -> tuple[bytes, str]:
        path = f"/snapshots/{quote(snapshot_id, safe='')}/blocks/{index}"
        url = f"{self._base}{path}?blockToken={quote(token, safe='-_.~')}"
        headers = await self._sign("GET", path, {"blockToken": token},
                                   {"X-Amz-Content-SHA256": _EMPTY_SHA256})
        try:
            async with self._session.get(yarl.URL(url, encoded=True), headers=headers) as resp:
                self._answered()
                if resp.status != 200:
                    raise await _api_error("GetSnapshotBlock", resp)
                data = await resp.read()
                return data, resp.headers.get("x-amz-Checksum", "")
        except aiohttp.ClientError as exc:
            raise Unreachable("GetSnapshotBlock", self._base, exc) from None

    async def put_block(self, snapshot_id: str, index: int, data: bytes, checksum: str,
                        progress: int | None = None) -> None:
        path = f"/snapshots/{quote(snapshot_id, safe='')}/blocks/{index}"
        headers = {
            "x-amz-Data-Length": str(len(data)),
            "x-amz-Checksum": checksum,
            "x-amz-Checksum-Algorithm": "SHA256",
            "Content-Type": "application/octet-stream",
            # The service's model says this body is not signed (v4-unsigned-body): the
            # block checksum, not the signature, protects it.
            "X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD",
        }
        if progress is not None:
            headers["x-amz-Progress"] = str(progress)
        signed = await self._sign("PUT", path, {}, headers)
        url = yarl.URL(self._base + path, encoded=True)
        try:
            async with self._session.put(url, data=data, headers=signed) as resp:
                self._answered()
                if resp.status != 201:
                    raise await _api_error("PutSnapshotBlock", resp)
                await resp.release()
        except aiohttp.ClientError as exc:
            raise Unreachable("PutSnapshotBlock", self._base, exc) from None

    def _answered(self) -> None:
        if not self._seen:  # once per session: the hot path pays nothing after that
            self._seen = True
            endpoint_answered(self._base)

    async def close(self) -> None:
        await self._session.close()


def _tls_context(scheme: str, ca_bundle: str | None) -> ssl.SSLContext | bool:
    """Trust what botocore trusts: the given bundle (AWS_CA_BUNDLE, the profile's ca_bundle),
    else botocore's default bundle, rather than aiohttp's default of the system store."""
    if scheme != "https":
        return True  # aiohttp's default; no TLS on this connector
    return ssl.create_default_context(cafile=get_cert_path(ca_bundle or True))


_EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


async def _api_error(operation: str, resp: aiohttp.ClientResponse) -> ApiError:
    code = resp.headers.get("x-amzn-ErrorType", "").split(":", 1)[0]
    body = await resp.read()
    message, reason = "", ""
    try:
        parsed = json.loads(body)
        message = str(parsed.get("Message") or parsed.get("message") or "")
        reason = str(parsed.get("Reason") or "")
        code = code or str(parsed.get("__type", "")).rsplit("#", 1)[-1]
    except (ValueError, AttributeError):
        message = body[:200].decode("utf-8", "replace")
    return ApiError(operation, code or f"HTTP{resp.status}", message, status=resp.status,
                    reason=reason)


