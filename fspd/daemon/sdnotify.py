"""systemd integration in pure Python: sd_notify datagrams and socket activation.

``NOTIFY_SOCKET`` is a path or, starting with ``@``, a Linux abstract-namespace name. Without it
every call is a no-op, so the daemon runs the same outside systemd.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Mapping

from fspd.log import get_logger

log = get_logger("fspd.daemon.sdnotify")

SD_LISTEN_FDS_START = 3


class Notifier:
    """Sends ``KEY=VALUE`` lines to systemd's notification socket."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if address.startswith("@"):
            self.address = "\0" + address[1:]
        elif address.startswith("/"):
            self.address = address
        self._sock: socket.socket | None = None
        self.watchdog_usec = _watchdog_usec(env)
        self._last_status: str | None = None
        self._failing = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """Send one datagram; failures are logged, never raised (systemd may be gone)."""
        if self.address is None:
            return False
        payload = "\n".join(lines).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(payload, self.address)
        except OSError as exc:
            if not self._failing:  # once per run of failures, not once per ping
                log.warning("sd_notify_failed", error=str(exc), message=lines[0])
            self._failing = True
            return False
        self._failing = False
        return True

    def ready(self, status: str | None = None) -> None:
        self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> None:
        text = text.replace("\n", " ")
        if text != self._last_status:
            self._last_status = text
            self.send(f"STATUS={text}")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    async def watchdog_loop(self) -> None:
        """Ping at half of WATCHDOG_USEC from the event loop: a stuck loop stops the pings."""
        if self.watchdog_usec is None or self.address is None:
            return
        interval = self.watchdog_usec / 2e6
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(interval)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec


def listen_fds(env: Mapping[str, str] | None = None) -> list[socket.socket]:
    """Sockets passed by systemd socket activation (LISTEN_FDS/LISTEN_PID), from fd 3."""
    env = os.environ if env is None else env
    if env.get("LISTEN_PID") != str(os.getpid()):
        return []
    try:
        count = int(env.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    socks = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        os.set_inheritable(fd, False)
        socks.append(socket.socket(fileno=fd))
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(key, None)
    return socks
