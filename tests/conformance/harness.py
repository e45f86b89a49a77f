"""How the conformance suite drives an endpoint: through the registry and one Pipeline, the
way run.py does, with a gate on the source so a test can act while blocks are in flight."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from fspd.blocks import BLOCK_SIZE, Block, BlockRef
from fspd.checkpoint import Checkpoint
from fspd.config import AwsSettings, PathSettings, RetrySettings, Settings, TransferSettings
from fspd.context import job_context
from fspd.endpoint import Gap, Source, SourceCapabilities, VolumeInfo
from fspd.endpoints import registry
from fspd.jobs import Destination, JobSpec
from fspd.pipeline import Pipeline
from fspd.progress import Progress
from fspd.run import open_checkpoint
from tests.conftest import TEST_ALLOW_ENDPOINTS
from tests.images import make_image

B = BLOCK_SIZE
JOB_ID = "conformance"
_DESTINATION: TypeAdapter[Any] = TypeAdapter(Destination)

# The images every endpoint is tried with (tests/images.make_image letters: D data,
# Z written zeros, H a hole, T a final partial block of 1000 bytes).
IMAGES = {
    "full": "DDDDDDDD",
    "sparse": "DHHDHHHD",
    "partial_last_block": "DDDT",
    "zero_blocks": "DZZDZ",
}


def settings(devices: tuple[str, ...] = ()) -> Settings:
    """Small pools, quick backoff, few attempts: a failing endpoint fails fast."""
    return Settings(
        transfer=TransferSettings(fetch_concurrency=4, put_concurrency=4, queue_blocks=4,
                                  worker_threads=2, checkpoint_interval_s=60),
        retry=RetrySettings(backoff_base_s=0.002, backoff_cap_s=0.02, max_attempts=3,
                            not_found_window_s=5, completion_wait_s=30),
        aws=AwsSettings(allow_endpoints=TEST_ALLOW_ENDPOINTS),
        paths=PathSettings(allow_devices=devices))


def image(tmp_path: Path, kind: str, seed: int = 7) -> tuple[Path, bytes]:
    path = tmp_path / f"{kind}.img"
    return path, make_image(path, IMAGES[kind], seed=seed)


class Gate:
    """Lets ``open_for`` fetches through, then holds the rest until ``release``."""

    def __init__(self, open_for: int | None = None,
                 on_first: Callable[[], Any] | None = None) -> None:
        self.open_for, self.on_first = open_for, on_first  # on_first: when the sinks are open
        self.source_closed = False
        self.fetched = 0
        self.held = asyncio.Event()  # a fetch is waiting at the gate
        self._released = asyncio.Event()
        if open_for is None:
            self._released.set()

    def release(self) -> None:
        self._released.set()

    async def admit(self) -> None:
        if self.fetched == 0 and self.on_first is not None:
            self.on_first()
        if self.open_for is not None and self.fetched >= self.open_for:
            self.held.set()
            await self._released.wait()
        self.fetched += 1


class GatedSource:
    """A source under a :class:`Gate`; counts what it fetched."""

    def __init__(self, inner: Source, gate: Gate) -> None:
        self.inner, self.gate = inner, gate
        self.fetches = 0
        self.closed = False

    async def open(self) -> VolumeInfo:
        return await self.inner.open()

    def entries(self) -> AsyncIterator[BlockRef | Gap]:
        return self.inner.entries()

    def skipped(self, ref: BlockRef) -> None:  # passed on: the pipeline sees the wrapper
        skips = SourceCapabilities.of(self.inner).skips
        if skips is not None:
            skips.skipped(ref)

    async def fetch(self, ref: BlockRef) -> Block:
        await self.gate.admit()
        self.fetches += 1
        return await self.inner.fetch(ref)

    async def close(self) -> None:
        self.closed = self.gate.source_closed = True
        await self.inner.close()


@dataclass
class Outcome:
    result: dict[str, Any] | None
    progress: Progress
    fetches: int
    source_closed: bool
    info: VolumeInfo | None = None


async def transfer(job: JobSpec, dest: Any, conf: Settings, *, state_dir: Path | None = None,
                   gate: Gate | None = None, progress: Progress | None = None,
                   discard: bool = True) -> Outcome:
    """Move ``job``'s source into ``dest`` (a destination spec, not necessarily one a job file
    may name) as run.py does: registry, job context, one Pipeline. With ``state_dir`` the run
    journals and resumes like a daemon job (``discard=False``: as if it crashed right after
    committing, before forgetting its journal). A stepped source (a chain) runs its steps, each
    into the sinks its step names."""
    gate = gate or Gate()
    if isinstance(dest, dict):
        dest = _DESTINATION.validate_python(dest)
    checkpoint: Checkpoint | None = (open_checkpoint(state_dir, JOB_ID, job)
                                     if state_dir is not None else None)
    progress = progress or Progress(job_id=JOB_ID)
    async with job_context(JOB_ID, conf, progress=progress, state_dir=state_dir,
                           checkpoint=checkpoint) as ctx:
        steps = registry.open_steps(ctx, job)
        if steps is not None:
            fetches, info = 0, None
            while (step := await steps.next_step()) is not None:
                source = GatedSource(registry.open_source(ctx, step), gate)
                try:
                    info = await source.open()
                    result = await Pipeline(
                        source, registry.open_sinks(ctx, step), progress,
                        fetch_concurrency=2, queue_blocks=4, checkpoint=checkpoint,
                        memory=ctx.limits.memory).run(info)
                finally:
                    await source.close()
                fetches += source.fetches
                steps.step_done(info, result[0])
            return Outcome(steps.result(), progress, fetches, True, info)
        source = GatedSource(registry.open_source(ctx, job), gate)
        try:
            info = await source.open()
            sink = registry.open_sink(ctx, job, dest, "dest")
            pipeline = Pipeline(source, [sink], progress, fetch_concurrency=2, queue_blocks=4,
                                checkpoint=checkpoint, memory=ctx.limits.memory)
            result = await pipeline.run(info)
        finally:
            await source.close()
    if checkpoint is not None and discard:
        checkpoint.discard()
    return Outcome(result[0], progress, source.fetches, source.closed, info)


async def cancelled_midway(job: JobSpec, dest: Any, conf: Settings, *, after: int,
                           state_dir: Path | None = None) -> Progress:
    """Start a transfer, let ``after`` blocks through, wait until the sink has them and the
    next fetch is held, then cancel it (it must end cancelled); return its progress."""
    gate, progress = Gate(open_for=after), Progress(job_id=JOB_ID)
    task = asyncio.create_task(transfer(job, dest, conf, state_dir=state_dir, gate=gate,
                                        progress=progress))
    async with asyncio.timeout(60):
        while not (gate.held.is_set() and progress.blocks_done >= after) and not task.done():
            await asyncio.sleep(0.01)  # polls the condition, not the clock
    if task.done():
        raise AssertionError(f"the transfer ended before it was cancelled: {task.result()}")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return progress
