"""In-process fakes for unit tests: a clock that never really waits, and a source and sinks
that keep blocks in memory. Built against the duck-typed Source/Sink interface of
``fspd/pipeline.py``; kept together here so that they follow that interface in one place.
No botocore, no network: a pipeline test with these runs in milliseconds."""

from __future__ import annotations

import asyncio
import hashlib
import heapq
from collections.abc import AsyncIterator
from typing import Any

from fspd.blocks import BLOCK_SIZE, Block, BlockRef, Kind
from fspd.errors import TransferFailed
from fspd.pipeline import Gap, VolumeInfo
from fspd.progress import Progress


class FakeClock:
    """A monotonic clock in virtual time: ``sleep`` waits until the clock reaches its deadline,
    and whenever every task is waiting the clock jumps to the earliest deadline. Nothing waits
    for real, and concurrent sleepers wake in deadline order. Every requested sleep is kept in
    ``sleeps``; a test may also move ``now`` itself."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0
        self._driver: asyncio.Task[None] | None = None

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._seq += 1
        heapq.heappush(self._timers, (self.now + seconds, self._seq, future))
        if self._driver is None or self._driver.done():
            self._driver = loop.create_task(self._drive())
        await future

    async def _drive(self) -> None:
        """Jump to the next deadline each time the other tasks have all stopped."""
        while True:
            await settle()
            while self._timers and self._timers[0][2].done():  # its sleeper was cancelled
                heapq.heappop(self._timers)
            if not self._timers:
                return
            deadline, _, future = heapq.heappop(self._timers)
            self.now = max(self.now, deadline)
            future.set_result(None)


async def settle(rounds: int = 200) -> None:
    """Run the event loop until every other task is blocked (only fakes: no I/O, no timers),
    or for ``rounds`` passes at most."""
    loop = asyncio.get_running_loop()
    for _ in range(rounds):
        await asyncio.sleep(0)
        if not getattr(loop, "_ready", True):  # nothing else runnable (CPython's loop)
            return


def block_bytes(index: int) -> bytes:
    """The distinct, non-zero content of block ``index`` in the fakes."""
    return index.to_bytes(8, "big") * (BLOCK_SIZE // 8)


class FakeSource:
    """A volume of ``volume_blocks`` blocks in memory: ``data`` indexes hold distinct bytes,
    ``zeros`` are listed as known zero blocks, everything else is a gap. Counts what it was
    asked; ``listed`` is how far the pipeline has read its listing."""

    def __init__(self, volume_blocks: int, data: list[int], zeros: list[int] | None = None,
                 *, fail_fetch_at: int | None = None) -> None:
        self.volume_blocks = volume_blocks
        self.data = sorted(data)
        self.zeros = sorted(zeros or [])
        self.fail_fetch_at = fail_fetch_at
        self.listed = 0  # entries (refs and gaps) handed to the pipeline
        self.fetched: list[int] = []

    async def open(self) -> VolumeInfo:
        return VolumeInfo(volume_size=self.volume_blocks * BLOCK_SIZE, origin="fake")

    async def entries(self) -> AsyncIterator[BlockRef | Gap]:
        kinds = {i: Kind.DATA for i in self.data} | {i: Kind.ZERO for i in self.zeros}
        position = 0
        for index in sorted(kinds):
            if index > position:
                self.listed += 1
                yield Gap(position, index)
            self.listed += 1
            yield BlockRef(index, kinds[index])
            position = index + 1
        if position < self.volume_blocks:
            self.listed += 1
            yield Gap(position, self.volume_blocks)

    async def fetch(self, ref: BlockRef) -> Block:
        await asyncio.sleep(0)
        if ref.index == self.fail_fetch_at:
            raise TransferFailed(f"fake source: block {ref.index} cannot be read")
        self.fetched.append(ref.index)
        data = block_bytes(ref.index)
        return Block(ref.index, data, hashlib.sha256(data).digest(), False)

    async def close(self) -> None:
        return None


class FakeSink:
    """A destination in memory. ``fail_at``: writing that block raises ``TransferFailed``.
    ``gate``: each write waits until the test lets it through (``gate.release()``), a
    deterministic slow sink. ``skip_zeros``: zero blocks are skipped (``write`` is False)."""

    def __init__(self, name: str, *, concurrency: int = 1, fail_at: int | None = None,
                 gate: asyncio.Semaphore | None = None, skip_zeros: bool = False) -> None:
        self.name = name
        self.concurrency = concurrency
        self.fail_at = fail_at
        self.gate = gate
        self.skip_zeros = skip_zeros
        self.info: VolumeInfo | None = None
        self.blocks: dict[int, bytes] = {}
        self.gaps: list[Gap] = []
        self.writing = 0  # writes in progress (waiting at the gate included)
        self.state = "new"

    async def open(self, info: VolumeInfo) -> None:
        self.info = info
        self.state = "open"

    async def write(self, block: Block) -> bool:
        self.writing += 1
        try:
            if self.gate is not None:
                await self.gate.acquire()
            if block.index == self.fail_at:
                raise TransferFailed(f"{self.name}: block {block.index} cannot be written")
            if block.zero and self.skip_zeros:
                return False
            self.blocks[block.index] = block.data
            return True
        finally:
            self.writing -= 1

    async def gap(self, gap: Gap) -> None:
        self.gaps.append(gap)

    async def commit(self) -> dict[str, Any]:
        self.state = "committed"
        return {"destination": self.name, "state": "completed", "blocks": len(self.blocks)}

    async def abort(self, error: BaseException) -> dict[str, Any]:
        self.state = "aborted"
        return {"destination": self.name, "state": "failed", "error": str(error)}


class WatchedProgress(Progress):
    """Progress that lets a test wait for a number of blocks done (no polling), and with
    ``depths`` records the queues' total depth at every block done."""

    def __init__(self, *, depths: bool = False) -> None:
        super().__init__()
        self.depths: list[int] | None = [] if depths else None
        self._changed = asyncio.Event()

    def block_done(self, nbytes: int = BLOCK_SIZE, *, skipped: bool = False) -> None:
        super().block_done(nbytes, skipped=skipped)
        if self.depths is not None:
            self.depths.append(sum(s.snapshot()["queue_depth"] for s in self.stages.values()))
        self._changed.set()

    async def wait_done(self, blocks: int, job: asyncio.Task[Any] | None = None) -> None:
        """Until ``blocks`` blocks are done (within a minute); fails if ``job`` ends first."""
        async with asyncio.timeout(60):
            while self.blocks_done < blocks:
                assert job is None or not job.done(), "the job ended first"
                self._changed.clear()
                changed = asyncio.ensure_future(self._changed.wait())
                try:
                    await asyncio.wait([changed] if job is None else [job, changed],
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    changed.cancel()
