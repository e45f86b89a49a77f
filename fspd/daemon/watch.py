"""Notice files arriving in a directory: inotify through the event loop, else a poll.

Either way the result is a wake-up; the caller rescans the directory (listing is cheap and
a rescan cannot miss a file the way a dropped event could).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import stat
import struct
from pathlib import Path

from fspd.log import get_logger

log = get_logger("fspd.daemon.watch")

IN_CLOSE_WRITE = 0x00000008
IN_CREATE = 0x00000100
IN_MOVED_TO = 0x00000080
IN_Q_OVERFLOW = 0x00004000
_EVENT = struct.Struct("iIII")  # struct inotify_event, then len bytes of name
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC


class DirWatcher:
    """``await wait(timeout)`` returns when something may have arrived, or at the timeout."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._event = asyncio.Event()
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def using_inotify(self) -> bool:
        return self._fd is not None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
            if fd < 0:
                raise OSError(ctypes.get_errno(), "inotify_init1")
            wd = libc.inotify_add_watch(fd, os.fsencode(self.path),
                                        IN_MOVED_TO | IN_CLOSE_WRITE | IN_CREATE)
            if wd < 0:
                err = ctypes.get_errno()
                os.close(fd)
                raise OSError(err, "inotify_add_watch")
        except (OSError, AttributeError) as exc:
            log.warning("inotify_unavailable", path=str(self.path), error=str(exc),
                        fallback="polling")
            return
        self._fd = fd
        self._loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        assert self._fd is not None
        wake = False
        try:
            while data := os.read(self._fd, 65536):
                wake = self._interesting(data) or wake
        except BlockingIOError:
            pass
        except OSError as exc:
            log.warning("inotify_read_failed", error=str(exc))
            wake = True
        if wake:
            self._event.set()

    def _interesting(self, data: bytes) -> bool:
        """A rename into the directory or a closed write is worth a scan; a plain create only
        when it is not a regular file (a symlink, say), since a regular file being created is
        still being written."""
        offset = 0
        while offset + _EVENT.size <= len(data):
            _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            name = data[offset + _EVENT.size:offset + _EVENT.size + length].rstrip(b"\0")
            offset += _EVENT.size + length
            if mask & (IN_MOVED_TO | IN_CLOSE_WRITE | IN_Q_OVERFLOW):
                return True
            if mask & IN_CREATE:
                try:
                    if not stat.S_ISREG(os.lstat(os.path.join(os.fsencode(self.path),
                                                              name)).st_mode):
                        return True
                except OSError:
                    continue
        return False

    async def wait(self, max_wait_s: float) -> None:
        try:
            async with asyncio.timeout(max_wait_s):
                await self._event.wait()
        except TimeoutError:
            pass
        self._event.clear()

    def close(self) -> None:
        if self._fd is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None
