"""SHA-256 of fetched blocks on threads beside the event loop, in batches.

Verifying a 512 KiB block costs ~0.3 ms of CPU, a third of what the loop spends on a block:
hashing on the loop caps one snapshot stream at one core. hashlib releases the GIL for
buffers this large, so threads can hash while the loop moves the next blocks. A hop to a
thread costs ~30-40 us of CPU (futures, a lock, waking the thread and then the loop), so
blocks go over in batches (fspd/batched.py).

With one usable CPU there is no core to spare and the loop hashes by itself (no hop).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import TYPE_CHECKING

from fspd.batched import BatchedThreads

if TYPE_CHECKING:
    from fspd.config import TransferSettings

MAX_AUTO_THREADS = 4  # one loop keeps at most ~2 busy; more only help several jobs at once
# Up to this many usable CPUs "auto" keeps hashing (and a regular file's reads,
# fspd/endpoints/files.py) on the loop. Measured on 2: each thread's GIL-releasing call ends in
# taking the GIL back from uvloop, thousands of hand-overs a second, and the second CPU is
# busy with the network stack and the other end anyway; threads cost 2-12 % more CPU and
# were 1-10 % slower (HTTP and TLS downloads, 2026-12-01). With more CPUs a thread has a
# core of its own and takes the hashing off the loop, which bounds one stream's speed.
LOOP_ONLY_MAX_CPUS = 2
BATCH = 8  # blocks a thread takes at once (4 MiB, ~2.5 ms of hashing)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. systemd's CPUAffinity=)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def thread_count(settings: TransferSettings, cpus: int | None = None) -> int:
    """Threads hashing fetched blocks, 0 for hashing on the loop: ``hash_in_threads``
    (true, false or "auto": threads when more than LOOP_ONLY_MAX_CPUS CPUs are usable),
    ``hash_threads`` (0 = auto: one per usable CPU beside the loop's, at most
    MAX_AUTO_THREADS)."""
    cpus = usable_cpus() if cpus is None else cpus
    on = settings.hash_in_threads
    if on is False or (on == "auto" and cpus <= LOOP_ONLY_MAX_CPUS):
        return 0
    return settings.hash_threads or max(1, min(cpus - 1, MAX_AUTO_THREADS))


class BlockHasher(BatchedThreads):
    """``await hasher.digest(data)``: the raw SHA-256 of ``data``, computed on a thread."""

    def __init__(self, threads: int, *, batch: int = BATCH) -> None:
        super().__init__(threads, batch=batch, name="fspd-hash")

    def digest(self, data: bytes | memoryview) -> asyncio.Future[bytes]:
        return self.submit(_sha256, data)


def _sha256(data: bytes | memoryview) -> bytes:
    return hashlib.sha256(data).digest()
