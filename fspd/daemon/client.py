"""The CLI's side of the control socket (aiohttp over a Unix socket)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from fspd.errors import BadInput, Cancelled, ExitCode, FspdError, PermissionProblem

BASE = "http://fspd"  # the host part is not used on a Unix socket


class DaemonUnavailable(FspdError):
    """The daemon's socket is missing, refuses connections, or is not ours to open."""

    exit_code = ExitCode.NOT_RUNNING


class Client:
    def __init__(self, socket_path: str, timeout_s: float = 30.0) -> None:
        self.socket_path = socket_path
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=self.socket_path),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=None))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    def _unavailable(self, exc: aiohttp.ClientConnectorError) -> DaemonUnavailable:
        err = exc.os_error
        if isinstance(err, PermissionError):
            return DaemonUnavailable(
                f"permission denied on {self.socket_path}: ask for membership of the socket's "
                "group (daemon.socket_group)")
        if isinstance(err, FileNotFoundError | ConnectionRefusedError):
            return DaemonUnavailable(f"the fspd daemon is not running (nothing listening on "
                                     f"{self.socket_path}); start it with `fspd serve` or "
                                     "`systemctl start fspd`")
        return DaemonUnavailable(f"cannot reach the daemon on {self.socket_path}: {err}")

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
        assert self._session is not None
        try:
            async with self._session.request(
                    method, BASE + path, json=body,
                    timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as resp:
                text = await resp.text()
                status = resp.status
        except aiohttp.ClientConnectorError as exc:
            raise self._unavailable(exc) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DaemonUnavailable(f"the daemon did not answer on {self.socket_path}: "
                                    f"{exc or type(exc).__name__}") from None
        try:
            data = json.loads(text)
        except ValueError:
            data = {"message": text.strip()}
        if status >= 400:
            raise _api_error(status, data)
        return data

    async def events(self, job: str | None = None) -> AsyncIterator[dict[str, Any]]:
        assert self._session is not None
        params = {"job": job} if job else None
        try:
            async with self._session.get(BASE + "/v1/events", params=params) as resp:
                if resp.status >= 400:
                    raise _api_error(resp.status, await resp.json(content_type=None))
                async for line in resp.content:
                    if line.strip():
                        yield json.loads(line)
        except aiohttp.ClientConnectorError as exc:
            raise self._unavailable(exc) from None
        except aiohttp.ClientPayloadError:
            return  # the daemon closed the stream (stopping)


def _api_error(status: int, data: dict[str, Any]) -> FspdError:
    message = str(data.get("message") or data.get("error") or f"HTTP {status}")
    field = data.get("field")
    if status == 403:
        return PermissionProblem(message)
    if status == 404:
        return BadInput(message.removeprefix(f"{field}: ") if field else message,
                        field=field or "job")
    return BadInput(message.removeprefix(f"{field}: ") if field else message, field=field)


def exit_code_for(record: dict[str, Any]) -> int:
    """The exit code for a finished job's summary or record."""
    state = record.get("state")
    if state == "completed":
        return int(ExitCode.OK)
    if state == "cancelled":
        return int(Cancelled.exit_code)
    kind = (record.get("error") or {}).get("error")
    return int({"BadInput": ExitCode.BAD_INPUT, "PermissionProblem": ExitCode.PERMISSION,
                "Cancelled": ExitCode.CANCELLED}.get(kind, ExitCode.TRANSFER_FAILED))
