"""The block budget (``transfer.max_buffered_blocks``) bounds the block data a job holds:
no stage keeps a block after its permit is given back (issue 12 item 12)."""

from __future__ import annotations

import asyncio
import tracemalloc
from pathlib import Path

from fspd.blocks import BLOCK_SIZE
from fspd.emulator.control import EmulatorControl
from tests.engine._support import download, fast_settings
from tests.fakes import WatchedProgress

BUDGET = 16  # the smallest the settings allow
SLACK_BLOCKS = 8  # a body being joined, the socket's read buffers, the file sink's write


async def test_block_data_in_memory_stays_within_the_budget_with_many_fetchers(
        emulator: EmulatorControl, tmp_path: Path) -> None:
    snap = emulator.synthetic(region="us-east-1", volume_size=1, allocation="sparse",
                              density=0.25, seed=12)
    settings = fast_settings(fetch_concurrency=128, max_buffered_blocks=BUDGET)
    progress = WatchedProgress()
    tracemalloc.start()
    try:
        task = asyncio.create_task(download(emulator.url, snap, tmp_path / "out.img",
                                            settings=settings, progress=progress))
        await progress.wait_done(16, task)  # clients and models loaded
        tracemalloc.reset_peak()
        baseline = tracemalloc.get_traced_memory()[0]
        await progress.wait_done(400, task)
        peak = tracemalloc.get_traced_memory()[1]
        result = await task
    finally:
        tracemalloc.stop()
    assert result["blocks_done"] > 400
    grown = (peak - baseline) / BLOCK_SIZE
    assert grown <= BUDGET + SLACK_BLOCKS, (
        f"{grown:.1f} blocks' worth of memory in use with a budget of {BUDGET}")
