"""The CLI's side of the control socket: :func:`request` (http.client over the Unix socket)
for one question and its answer, :class:`Client` (aiohttp) for the event stream. aiohttp is
imported only by the latter: ``fspd status`` need not load it."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fspd.errors import BadInput, Cancelled, ExitCode, FspdError, PermissionProblem

if TYPE_CHECKING:
    import aiohttp

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
        import aiohttp

        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=self.socket_path),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=None))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    def _unavailable(self, exc: aiohttp.ClientConnectorError) -> DaemonUnavailable:
        return _unavailable(self.socket_path, exc.os_error)

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
        assert self._session is not None
        import aiohttp

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
        return _answer(status, text)

    async def events(self, job: str | None = None) -> AsyncIterator[dict[str, Any]]:
        assert self._session is not None
        import aiohttp

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


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("fspd", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def request(socket_path: str, method: str, path: str, body: dict[str, Any] | None = None,
            timeout_s: float = 30.0) -> dict[str, Any]:
    """One request to the daemon and its JSON answer (errors as :class:`Client.call`).
    ``path`` may hold a job name as typed: it is percent-quoted here."""
    conn = _UnixConnection(socket_path, timeout_s)
    try:
        try:
            conn.connect()
        except OSError as exc:
            raise _unavailable(socket_path, exc) from None
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {} if payload is None else {"Content-Type": "application/json"}
            conn.request(method, quote(path, safe="/"), body=payload, headers=headers)
            resp = conn.getresponse()
            text = resp.read().decode("utf-8", "replace")
        except (OSError, http.client.HTTPException) as exc:
            raise DaemonUnavailable(f"the daemon did not answer on {socket_path}: "
                                    f"{exc or type(exc).__name__}") from None
        return _answer(resp.status, text)
    finally:
        conn.close()


def _unavailable(socket_path: str, err: OSError) -> DaemonUnavailable:
    if isinstance(err, PermissionError):
        return DaemonUnavailable(
            f"permission denied on {socket_path}: ask for membership of the socket's "
            "group (daemon.socket_group)")
    if isinstance(err, FileNotFoundError | ConnectionRefusedError):
        return DaemonUnavailable(f"the fspd daemon is not running (nothing listening on "
                                 f"{socket_path}); start it with `fspd serve` or "
                                 "`systemctl start fspd`")
    return DaemonUnavailable(f"cannot reach the daemon on {socket_path}: {err}")


def _answer(status: int, text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError:
        data = {"message": text.strip()}
    if status >= 400:
        raise _api_error(status, data)
    return data


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
