"""Limits shared across jobs, and per-job controls.

One :class:`SharedLimits` per process (the daemon's, or a foreground run's) holds what every
job draws from: the bandwidth token bucket (changeable at run time), request pacing per
snapshot and per account (AWS's quotas apply to all of them together), and a budget of
blocks buffered in memory. Each job has a :class:`JobControl` for pause/resume. The pipeline
asks both before every block it fetches.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

from fspd.clock import SYSTEM_CLOCK, Clock
from fspd.retry import RateController


class Bandwidth:
    """A token bucket in bytes per second; ``rate = 0`` means unlimited."""

    def __init__(self, rate: float = 0.0, burst_s: float = 0.5, *,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.burst_s = burst_s
        self.clock = clock
        self._rate = 0.0
        self._tokens = 0.0
        self._stamp = clock.monotonic()
        self._lock = asyncio.Lock()
        self.set_rate(rate)

    @property
    def rate(self) -> float:
        return self._rate

    def set_rate(self, rate: float) -> None:
        if rate < 0:
            raise ValueError("bandwidth must be >= 0")
        self._rate = float(rate)
        self._tokens = min(self._tokens, self._rate * self.burst_s)

    async def consume(self, nbytes: int) -> None:
        if self._rate <= 0:
            return
        async with self._lock:  # FIFO: waiters are served in order
            while True:
                now = self.clock.monotonic()
                rate = self._rate
                if rate <= 0:
                    return
                self._tokens = min(max(rate * self.burst_s, nbytes),
                                   self._tokens + (now - self._stamp) * rate)
                self._stamp = now
                if self._tokens >= nbytes:
                    self._tokens -= nbytes
                    return
                await self.clock.sleep(min(1.0, (nbytes - self._tokens) / rate))


class BlockBudget:
    """Blocks of memory (~512 KiB each) shared by every job: a counting budget whose waiters
    are served strictly in order, one unit (a block being fetched) or many at once (an S3
    archive window, see :class:`Reservation`). A request is granted whole or not at all, so
    two windows can never each hold part of what they need. ``acquire``/``release`` take
    one unit, like the semaphore it replaces."""

    def __init__(self, units: int) -> None:
        self.units = units
        self.free = units
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def held(self) -> int:
        return self.units - self.free

    def try_take(self, n: int) -> bool:
        if n > self.units:
            raise ValueError(f"{n} blocks exceed the whole budget of {self.units}")
        if self._waiters or self.free < n:
            return False
        self.free -= n
        return True

    async def take(self, n: int) -> None:
        if self.try_take(n):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = (n, future)
        self._waiters.append(waiter)
        self._wake()  # fits nothing here; a budget shared between processes starts looking
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # granted as it was cancelled
                self.give(n)
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
                self._wake()  # a smaller request behind this one may fit now
            raise

    def give(self, n: int) -> None:
        self.free += n
        if self.free > self.units:
            raise RuntimeError("block budget released more than was taken")
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._waiters[0][0] <= self.free:
            n, future = self._waiters.popleft()
            if future.done():
                continue
            self.free -= n
            future.set_result(None)

    async def acquire(self) -> bool:
        await self.take(1)
        return True

    def release(self) -> None:
        self.give(1)


class Reservation:
    """Units of a :class:`BlockBudget` held for one S3 archive window, returned once every
    holder has let go: the sink (until the window's segments are uploaded and its buffers
    dropped) and the pipeline (for each of the window's blocks, until every destination has
    it). :meth:`close` returns them at once, whoever still holds them (cancellation)."""

    __slots__ = ("_budget", "_refs", "units")

    def __init__(self, budget: BlockBudget, units: int) -> None:
        self._budget = budget
        self.units = units
        self._refs = 1

    def retain(self) -> None:
        if self._refs > 0:
            self._refs += 1

    def drop(self) -> None:
        if self._refs > 0:
            self._refs -= 1
            if self._refs == 0:
                self._budget.give(self.units)

    def close(self) -> None:
        if self._refs > 0:
            self._refs = 0
            self._budget.give(self.units)


class SharedLimits:
    """Budgets shared by every job of one process."""

    def __init__(self, *, per_snapshot_rps: float, per_account_rps: float,
                 max_buffered_blocks: int, bandwidth: Bandwidth | None = None,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.per_snapshot_rps = per_snapshot_rps
        self.per_account_rps = per_account_rps
        self.clock = clock  # of the request pacing
        self.bandwidth = bandwidth or Bandwidth(clock=clock)
        self.max_buffered_blocks = max_buffered_blocks
        self._memory: BlockBudget | None = None
        self._rates: dict[tuple[Any, ...], RateController] = {}

    @classmethod
    def from_settings(cls, transfer: Any, bandwidth: Bandwidth | None = None) -> SharedLimits:
        return cls(per_snapshot_rps=transfer.per_snapshot_rps,
                   per_account_rps=transfer.per_account_rps,
                   max_buffered_blocks=transfer.max_buffered_blocks, bandwidth=bandwidth)

    @property
    def memory(self) -> BlockBudget:
        """Blocks in memory across all jobs (created on first use, inside the loop)."""
        if self._memory is None:
            self._memory = BlockBudget(self.max_buffered_blocks)
        return self._memory

    def rate(self, op: str, account: Any, snapshot_id: str) -> RateController:
        """Pacing for one snapshot's Get or Put stream, chained to its account's: AWS caps
        both (1,000/s per snapshot; 1,000/s per account and region by default)."""
        key = (op, account, snapshot_id)
        rate = self._rates.get(key)
        if rate is None:
            account_key = (op, account)
            parent = self._rates.get(account_key)
            if parent is None:
                parent = self._rates[account_key] = RateController(
                    self.per_account_rps, clock=self.clock)
            rate = self._rates[key] = RateController(
                self.per_snapshot_rps, parent=parent, clock=self.clock)
        return rate


class JobControl:
    """Pause/resume for one job. A paused job finishes the blocks in flight, then waits."""

    def __init__(self, bandwidth: Bandwidth | None = None,
                 limits: SharedLimits | None = None) -> None:
        self._running = asyncio.Event()
        self._running.set()
        self.limits = limits
        self.bandwidth = bandwidth or (limits.bandwidth if limits else None)

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    async def admit(self, nbytes: int) -> None:
        """Wait until the job may move ``nbytes`` more."""
        if not self._running.is_set():
            await self._running.wait()
        if self.bandwidth is not None:
            await self.bandwidth.consume(nbytes)
            # Paused while waiting for bandwidth: wait again, or every waiting fetch slips by.
            if not self._running.is_set():
                await self._running.wait()
