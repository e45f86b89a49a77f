"""The daemon's global limits, shared by its worker processes through shared memory.

``fspd serve`` runs jobs in worker processes (fspd/daemon/pool.py), but the bandwidth cap,
AWS's request quotas (per snapshot, per account) and the memory budget are the host's, not a
worker's. The parent creates one small region of shared memory (a memfd, passed to each
worker) that holds, behind one lock:

* the bandwidth token bucket (rate, tokens, time stamp): every worker takes its bytes from the
  same bucket, so the cap holds whatever the number of workers;
* the memory (block) budget: the units in use in total and per worker, and at most one
  *blocker* -- the worker whose oldest request did not fit, which others may then not starve
  (they take only what leaves its request room);
* the request pacing: one "next free slot" time per request stream (a snapshot's Get or Put
  stream, an account's), so two jobs on the same snapshot in two workers share one pace.

The lock is a POSIX record lock (``fcntl.lockf``) on the memfd: the kernel drops it when its
holder dies, so a worker killed with SIGKILL cannot wedge the others; the parent then gives
back the units that worker held (:meth:`SharedRegion.reclaim`). Each operation takes the lock
once, for a few microseconds, with no await inside. Waits (bandwidth, memory) sleep outside
the lock; a worker waiting for memory another worker frees polls every
:data:`MEMORY_POLL_S`. Within one worker, waiters keep their FIFO order, as before.

Why shared memory rather than grants from the parent over a pipe: each block needs a memory
unit, bandwidth and two pacing slots; asking the parent's event loop for each would put it on
the path of every block of every worker (the very loop the workers are there to relieve), and
batched grants would loosen the per-snapshot pacing that must hold to the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import hashlib
import mmap
import os
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from fspd.budget import Bandwidth, BlockBudget, SharedLimits
from fspd.retry import RateController

MAX_WORKERS = 256
PACING_SLOTS = 4096  # request streams paced at once (each slot is 16 bytes)
PACING_STALE_S = 60.0  # a stream idle this long gives its slot up to a new one
MEMORY_POLL_S = 0.002  # a worker waiting for units another worker frees looks this often
TARGET_SLOTS = 1024  # target files locked by jobs at once that the table can name
JOB_ID_BYTES = 64  # engine job ids are at most 64 characters


class _Layout(ctypes.Structure):
    _fields_ = [
        ("bw_rate", ctypes.c_double), ("bw_tokens", ctypes.c_double),
        ("bw_stamp", ctypes.c_double), ("bw_burst_s", ctypes.c_double),
        ("mem_units", ctypes.c_int64), ("mem_used", ctypes.c_int64),
        ("mem_blocker", ctypes.c_int64), ("mem_blocker_n", ctypes.c_int64),
        ("mem_held", ctypes.c_int64 * MAX_WORKERS),
        ("pace_key", ctypes.c_uint64 * PACING_SLOTS),
        ("pace_next", ctypes.c_double * PACING_SLOTS),
        ("lock_owner", ctypes.c_int64 * TARGET_SLOTS),  # worker index + 1; 0 = free
        ("lock_dev", ctypes.c_uint64 * TARGET_SLOTS),
        ("lock_ino", ctypes.c_uint64 * TARGET_SLOTS),
        ("lock_job", (ctypes.c_char * JOB_ID_BYTES) * TARGET_SLOTS),
        # This host's share (0..1] of per_account_rps: 1 alone, 1/N among N fleet hosts
        # running jobs (fspd/daemon/fleet_pacing.py)
        ("account_share", ctypes.c_double),
    ]


class SharedRegion:
    """The shared state, mapped from ``fd`` (a memfd made by :meth:`create`)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._map = mmap.mmap(fd, ctypes.sizeof(_Layout))
        self.s = _Layout.from_buffer(self._map)

    @classmethod
    def create(cls, *, memory_units: int, bandwidth: float, burst_s: float = 0.5
               ) -> SharedRegion:
        fd = os.memfd_create("fspd-limits", os.MFD_CLOEXEC)
        os.ftruncate(fd, ctypes.sizeof(_Layout))
        region = cls(fd)
        s = region.s
        s.mem_units, s.mem_blocker, s.bw_burst_s = memory_units, -1, burst_s
        s.bw_stamp = time.monotonic()
        s.account_share = 1.0
        region.set_rate(bandwidth)
        return region

    @property
    def account_share(self) -> float:
        return self.s.account_share

    def set_account_share(self, share: float) -> None:
        """The share of ``transfer.per_account_rps`` this host's requests may use, now."""
        if not 0 < share <= 1:
            raise ValueError("an account share is in (0, 1]")
        with self.locked() as s:
            s.account_share = float(share)

    @contextlib.contextmanager
    def locked(self) -> Iterator[_Layout]:
        fcntl.lockf(self.fd, fcntl.LOCK_EX)
        try:
            yield self.s
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)

    # --- bandwidth -----------------------------------------------------------------------

    @property
    def rate(self) -> float:
        return self.s.bw_rate

    def set_rate(self, rate: float) -> None:
        if rate < 0:
            raise ValueError("bandwidth must be >= 0")
        with self.locked() as s:
            s.bw_rate = float(rate)
            s.bw_tokens = min(s.bw_tokens, s.bw_rate * s.bw_burst_s)

    def take_bytes(self, nbytes: int) -> float:
        """Take ``nbytes`` from the bucket: 0.0 if taken, else how long to wait first."""
        with self.locked() as s:
            rate = s.bw_rate
            if rate <= 0:
                return 0.0
            now = time.monotonic()
            s.bw_tokens = min(max(rate * s.bw_burst_s, nbytes),
                              s.bw_tokens + max(0.0, now - s.bw_stamp) * rate)
            s.bw_stamp = now
            if s.bw_tokens >= nbytes:
                s.bw_tokens -= nbytes
                return 0.0
            return min(1.0, (nbytes - s.bw_tokens) / rate)

    # --- memory --------------------------------------------------------------------------

    @property
    def memory_units(self) -> int:
        return self.s.mem_units

    @property
    def memory_free(self) -> int:
        return self.s.mem_units - self.s.mem_used

    def held(self, worker: int) -> int:
        return self.s.mem_held[worker]

    def take_units(self, worker: int, n: int, *, queued: bool = False) -> bool:
        """Take ``n`` units for ``worker`` if they fit without starving another worker's
        blocked request. ``queued``: this is the worker's oldest waiting request; if it does
        not fit, it becomes the blocker (when there is none yet)."""
        with self.locked() as s:
            free = s.mem_units - s.mem_used
            blocker = s.mem_blocker
            room = free - (s.mem_blocker_n if blocker not in (-1, worker) else 0)
            if n <= room:
                s.mem_used += n
                s.mem_held[worker] += n
                if blocker == worker:
                    s.mem_blocker, s.mem_blocker_n = -1, 0
                return True
            if queued and blocker in (-1, worker):
                s.mem_blocker, s.mem_blocker_n = worker, n
            return False

    def give_units(self, worker: int, n: int) -> None:
        with self.locked() as s:
            if n > s.mem_held[worker]:
                raise RuntimeError("block budget released more than was taken")
            s.mem_used -= n
            s.mem_held[worker] -= n

    def unblock(self, worker: int) -> None:
        """``worker`` no longer waits: others may take what it was waiting for."""
        if self.s.mem_blocker != worker:  # only the worker itself makes itself the blocker
            return
        with self.locked() as s:
            if s.mem_blocker == worker:
                s.mem_blocker, s.mem_blocker_n = -1, 0

    def reclaim(self, worker: int) -> int:
        """Give back everything a dead worker held; how many units that was."""
        with self.locked() as s:
            n = s.mem_held[worker]
            s.mem_used -= n
            s.mem_held[worker] = 0
            if s.mem_blocker == worker:
                s.mem_blocker, s.mem_blocker_n = -1, 0
            for i in range(TARGET_SLOTS):
                if s.lock_owner[i] == worker + 1:
                    s.lock_owner[i] = 0
        return n

    # --- request pacing ------------------------------------------------------------------

    def next_slot(self, key: int, now: float, burst_s: float, interval: float) -> float:
        """Reserve the next request slot of the stream ``key`` (a nonzero 64-bit hash); how
        long to wait for it. Slots are spaced by ``interval`` across every worker."""
        with self.locked() as s:
            i = self._find(s, key, now)
            slot = max(now - burst_s, s.pace_next[i])
            s.pace_next[i] = slot + interval
        return max(0.0, slot - now)

    @staticmethod
    def _find(s: _Layout, key: int, now: float) -> int:
        start = key % PACING_SLOTS
        reuse = empty = -1
        for step in range(PACING_SLOTS):
            i = (start + step) % PACING_SLOTS
            k = s.pace_key[i]
            if k == key:
                return i
            if k == 0:  # keys are never emptied: the key is not further along
                empty = i
                break
            if reuse < 0 and s.pace_next[i] < now - PACING_STALE_S:
                reuse = i
        i = reuse if reuse >= 0 else empty
        if i < 0:  # every slot holds a live stream (4,096 of them): share one
            return start
        s.pace_key[i], s.pace_next[i] = key, 0.0
        return i


class SharedTargetLocks:
    """Which job holds the lock on a target file, across every worker: the table that
    fspd/endpoints/files.py keeps per process (``_LOCKED``, (st_dev, st_ino) -> job id), so
    that a job refused a target names the job of another worker that writes it."""

    def __init__(self, region: SharedRegion, worker: int) -> None:
        self.region = region
        self.owner = worker + 1

    def _index(self, s: _Layout, key: tuple[int, int]) -> int:
        for i in range(TARGET_SLOTS):
            if s.lock_owner[i] and (s.lock_dev[i], s.lock_ino[i]) == key:
                return i
        return -1

    def get(self, key: tuple[int, int], default: str | None = None) -> str | None:
        with self.region.locked() as s:
            i = self._index(s, key)
            return s.lock_job[i].value.decode() if i >= 0 else default

    def __setitem__(self, key: tuple[int, int], job: str) -> None:
        with self.region.locked() as s:
            i = self._index(s, key)
            if i < 0:
                free = [j for j in range(TARGET_SLOTS) if not s.lock_owner[j]]
                if not free:
                    return  # a full table: the refusal names the holder's pid instead
                i = free[0]
            s.lock_owner[i], s.lock_dev[i], s.lock_ino[i] = self.owner, key[0], key[1]
            s.lock_job[i].value = job.encode()[:JOB_ID_BYTES - 1]

    def pop(self, key: tuple[int, int], default: str | None = None) -> str | None:
        with self.region.locked() as s:
            i = self._index(s, key)
            if i < 0:
                return default
            s.lock_owner[i] = 0
            return s.lock_job[i].value.decode()


def stream_key(*parts: Any) -> int:
    """A nonzero 64-bit key for a request stream (the same in every worker)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


# --- the worker's side: the engine's limit classes over the region -----------------------

class SharedBandwidth(Bandwidth):
    """The bandwidth bucket of the region (its rate is the parent's to set)."""

    def __init__(self, region: SharedRegion) -> None:
        self.region = region
        self._lock = asyncio.Lock()

    @property
    def rate(self) -> float:
        return self.region.rate

    def set_rate(self, rate: float) -> None:
        self.region.set_rate(rate)

    async def consume(self, nbytes: int) -> None:
        if self.region.rate <= 0:
            return
        async with self._lock:  # FIFO among this worker's waiters
            while True:
                delay = self.region.take_bytes(nbytes)
                if delay <= 0:
                    return
                await asyncio.sleep(delay)  # tokens refill with time: nothing to wait on


class SharedBlockBudget(BlockBudget):
    """The region's memory budget, as one worker's :class:`BlockBudget`: its own waiters in
    FIFO order, the units counted across every worker."""

    def __init__(self, region: SharedRegion, worker: int) -> None:
        self.region = region
        self.worker = worker
        self.units = region.memory_units
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._poller: asyncio.Task[None] | None = None

    @property  # type: ignore[override]
    def free(self) -> int:
        return self.region.memory_free

    @property
    def held(self) -> int:
        return self.region.held(self.worker)

    def try_take(self, n: int) -> bool:
        if n > self.units:
            raise ValueError(f"{n} blocks exceed the whole budget of {self.units}")
        if self._waiters:
            return False
        return self.region.take_units(self.worker, n)

    def give(self, n: int) -> None:
        self.region.give_units(self.worker, n)
        self._wake()

    def _grant(self) -> None:
        while self._waiters:
            n, future = self._waiters[0]
            if future.done():
                self._waiters.popleft()
                continue
            if not self.region.take_units(self.worker, n, queued=True):
                return
            self._waiters.popleft()
            future.set_result(None)
        self.region.unblock(self.worker)

    def _wake(self) -> None:
        self._grant()
        if self._waiters and (self._poller is None or self._poller.done()):
            self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        """Units freed by another worker wake nobody here: look for them."""
        while self._waiters:
            await asyncio.sleep(MEMORY_POLL_S)
            self._grant()


class SharedRateController(RateController):
    """A :class:`RateController` whose request slots come from the region: its rate reacts
    to this worker's answers, its pace is kept with every worker's requests on the stream."""

    def __init__(self, max_rate: float, *, region: SharedRegion, key: int,
                 parent: RateController | None = None, account: bool = False) -> None:
        super().__init__(max_rate, parent=parent)
        self.region = region
        self.key = key
        self.account = account  # an account's stream: paced at most at the host's share

    def reserve(self) -> float:
        now = self.clock.monotonic()  # CLOCK_MONOTONIC: one clock for every worker
        rate = self.rate
        if self.account:
            rate = min(rate, max(self.min_rate, self.max_rate * self.region.account_share))
        return self.region.next_slot(self.key, now, self.burst_s, 1.0 / rate)


class WorkerLimits(SharedLimits):
    """A worker's :class:`SharedLimits`, drawing on the region."""

    def __init__(self, region: SharedRegion, worker: int, transfer: Any) -> None:
        super().__init__(per_snapshot_rps=transfer.per_snapshot_rps,
                         per_account_rps=transfer.per_account_rps,
                         max_buffered_blocks=region.memory_units,
                         bandwidth=SharedBandwidth(region))
        self.region = region
        self.worker = worker

    @property
    def memory(self) -> BlockBudget:
        if self._memory is None:
            self._memory = SharedBlockBudget(self.region, self.worker)
        return self._memory

    def rate(self, op: str, account: Any, snapshot_id: str) -> RateController:
        key = (op, account, snapshot_id)
        rate = self._rates.get(key)
        if rate is None:
            account_key = (op, account)
            parent = self._rates.get(account_key)
            if parent is None:
                parent = self._rates[account_key] = SharedRateController(
                    self.per_account_rps, region=self.region, key=stream_key(*account_key),
                    account=True)
            rate = self._rates[key] = SharedRateController(
                self.per_snapshot_rps, region=self.region, key=stream_key(*key), parent=parent)
        return rate
