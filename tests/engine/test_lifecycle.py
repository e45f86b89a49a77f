"""Cancellation leaves nothing running; a job's memory does not grow with the volume."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fspd.emulator.control import EmulatorControl
from tests.engine._support import download
from tests.fakes import WatchedProgress


async def test_cancelling_a_download_stops_every_stage_and_leaves_no_task(
        emulator: EmulatorControl, tmp_path: Path) -> None:
    snap = emulator.synthetic(region="us-east-1", volume_size=4, allocation="full", seed=9)
    emulator.faults(latency_ms=20, operations=["GetSnapshotBlock"])
    before = asyncio.all_tasks()
    progress = WatchedProgress()
    task = asyncio.create_task(download(emulator.url, snap, tmp_path / "out.img",
                                        progress=progress))
    await progress.wait_done(20, task)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=10)
    assert task in done and task.cancelled()
    assert progress.state == "cancelled"
    assert progress.blocks_done < 4 * 2048
    leftover = [t for t in asyncio.all_tasks() - before if t is not asyncio.current_task()]
    assert leftover == []


async def test_queues_stay_bounded_while_the_writer_is_slow(
        emulator: EmulatorControl, tmp_path: Path) -> None:
    """Backpressure: the stages before a slow sink wait instead of buffering blocks."""
    snap = emulator.synthetic(region="us-east-1", volume_size=1, allocation="full", seed=10)
    progress = WatchedProgress(depths=True)
    await download(emulator.url, snap, tmp_path / "out.img", progress=progress)
    # fast_settings(): queue_blocks=32 per queue, two queues.
    assert progress.depths and max(progress.depths) <= 2 * 32
