"""Limits shared across jobs (bandwidth) and per-job controls (pause/resume).

The daemon holds one :class:`Bandwidth` for all jobs and changes its rate at run time; each job
has a :class:`JobControl`. The pipeline asks both before every block it fetches.
"""

from __future__ import annotations

import asyncio
import time


class Bandwidth:
    """A token bucket in bytes per second; ``rate = 0`` means unlimited."""

    def __init__(self, rate: float = 0.0, burst_s: float = 0.5) -> None:
        self.burst_s = burst_s
        self._rate = 0.0
        self._tokens = 0.0
        self._stamp = time.monotonic()
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
                now = time.monotonic()
                rate = self._rate
                if rate <= 0:
                    return
                self._tokens = min(max(rate * self.burst_s, nbytes),
                                   self._tokens + (now - self._stamp) * rate)
                self._stamp = now
                if self._tokens >= nbytes:
                    self._tokens -= nbytes
                    return
                await asyncio.sleep(min(1.0, (nbytes - self._tokens) / rate))


class JobControl:
    """Pause/resume for one job. A paused job finishes the blocks in flight, then waits."""

    def __init__(self, bandwidth: Bandwidth | None = None) -> None:
        self._running = asyncio.Event()
        self._running.set()
        self.bandwidth = bandwidth

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
