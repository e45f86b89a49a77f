"""SHA-256 of fetched blocks on threads beside the event loop, in batches.

Verifying a 512 KiB block costs ~0.3 ms of CPU, a third of what the loop spends on a block:
hashing on the loop caps one snapshot stream at one core. hashlib releases the GIL for
buffers this large, so threads can hash while the loop moves the next blocks. A hop to a
thread costs ~30-40 us of CPU (futures, a lock, waking the thread and then the loop), so
blocks go over in batches: a hashing thread takes every block waiting (up to ``batch``) and
hands the digests back with one wake-up of the loop. While it hashes, the next blocks queue
up, so under load the hop is paid once per batch, not per block. A second thread is woken
only when more than a batch is waiting.

With one usable CPU there is no core to spare and the loop hashes by itself (no hop).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fspd.config import TransferSettings

MAX_AUTO_THREADS = 4  # one loop keeps at most ~2 busy; more only help several jobs at once
BATCH = 8  # blocks a thread takes at once (4 MiB, ~2.5 ms of hashing)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. systemd's CPUAffinity=)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def thread_count(settings: TransferSettings, cpus: int | None = None) -> int:
    """Threads hashing fetched blocks, 0 for hashing on the loop: ``hash_in_threads``
    (true, false or "auto": threads when more than one CPU is usable), ``hash_threads``
    (0 = auto: one per usable CPU beside the loop's, at most MAX_AUTO_THREADS)."""
    cpus = usable_cpus() if cpus is None else cpus
    on = settings.hash_in_threads
    if on is False or (on == "auto" and cpus < 2):
        return 0
    return settings.hash_threads or max(1, min(cpus - 1, MAX_AUTO_THREADS))


class BlockHasher:
    """``await hasher.digest(data)``: the raw SHA-256 of ``data``, computed on a thread."""

    def __init__(self, threads: int, *, batch: int = BATCH) -> None:
        self.threads = threads
        self.batch = batch
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="fspd-hash")
        self._lock = threading.Lock()
        self._pending: list[tuple[bytes | memoryview, asyncio.Future[bytes]]] = []
        self._draining = 0  # threads taking batches from _pending
        self._loop: asyncio.AbstractEventLoop | None = None

    def digest(self, data: bytes | memoryview) -> asyncio.Future[bytes]:
        loop = self._loop = self._loop or asyncio.get_running_loop()
        fut: asyncio.Future[bytes] = loop.create_future()
        with self._lock:
            self._pending.append((data, fut))
            wake = self._draining == 0 or (self._draining < self.threads
                                           and len(self._pending) > self.batch)
            if wake:
                self._draining += 1
        if wake:
            self._pool.submit(self._drain, loop)
        return fut

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """On a hashing thread: hash batches until nothing waits."""
        while True:
            with self._lock:
                if not self._pending:
                    self._draining -= 1
                    return
                batch = self._pending[:self.batch]
                del self._pending[:self.batch]
            try:
                result: list[bytes] | BaseException = [hashlib.sha256(data).digest()
                                                       for data, _ in batch]
            except BaseException as exc:  # (MemoryError): the waiting fetches fail, not hang
                result = exc
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_deliver, batch, result)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _deliver(batch: list[tuple[bytes | memoryview, asyncio.Future[bytes]]],
             result: list[bytes] | BaseException) -> None:
    for i, (_, fut) in enumerate(batch):
        if fut.done():  # its fetch was cancelled meanwhile
            continue
        if isinstance(result, BaseException):
            fut.set_exception(result)
        else:
            fut.set_result(result[i])
