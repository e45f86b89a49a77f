"""The Pipeline in-process, with in-memory sources and sinks (tests/fakes.py): what happens to
the other destinations when one fails, memory permits on cancellation, the progress counts of
a fan-out, and backpressure from a slow destination. No AWS, no network, no real waits."""

from __future__ import annotations

import asyncio

import pytest

from fspd.blocks import BLOCK_SIZE
from fspd.budget import BlockBudget
from fspd.errors import TransferFailed
from fspd.pipeline import Gap, Pipeline
from fspd.progress import Progress
from tests.fakes import FakeSink, FakeSource, block_bytes, settle


def pipeline(source: FakeSource, sinks: list[FakeSink], progress: Progress, *,
             policies: list[str] | None = None, fetch_concurrency: int = 4,
             queue_blocks: int = 8, memory: BlockBudget | None = None) -> Pipeline:
    return Pipeline(source, sinks, progress, fetch_concurrency=fetch_concurrency,  # type: ignore[arg-type]
                    queue_blocks=queue_blocks, sink_policies=policies, memory=memory)


async def run(p: Pipeline, source: FakeSource) -> list[dict[str, object]]:
    return await p.run(await source.open())


def assert_has_every_block(sink: FakeSink, indexes: list[int]) -> None:
    assert sorted(sink.blocks) == indexes
    assert all(sink.blocks[i] == block_bytes(i) for i in indexes)


async def test_a_failing_sink_with_policy_drop_is_left_out_and_the_others_complete() -> None:
    data = list(range(0, 40, 2))
    source = FakeSource(48, data)
    bad, good1, good2 = FakeSink("bad", fail_at=10), FakeSink("good1"), FakeSink("good2")
    progress = Progress()
    results = await run(pipeline(source, [bad, good1, good2], progress,
                                 policies=["drop", "fail", "fail"]), source)
    assert [r["state"] for r in results] == ["failed", "completed", "completed"]
    assert "block 10 cannot be written" in str(results[0]["error"])
    assert (bad.state, good1.state, good2.state) == ("aborted", "committed", "committed")
    assert_has_every_block(good1, data)
    assert_has_every_block(good2, data)
    assert 10 not in bad.blocks
    assert progress.destinations["bad"]["state"] == "dropped"
    assert progress.errors == 1 and "bad" in str(progress.last_error)
    assert progress.blocks_done == len(data)  # the dropped sink's share is counted as done


async def test_a_failing_sink_with_policy_fail_fails_the_job_and_aborts_every_sink() -> None:
    source = FakeSource(48, list(range(0, 40, 2)))
    bad, good = FakeSink("bad", fail_at=10), FakeSink("good")
    with pytest.raises(TransferFailed, match="destination bad: bad: block 10"):
        await run(pipeline(source, [bad, good], Progress(), policies=["fail", "drop"]), source)
    assert (bad.state, good.state) == ("aborted", "aborted")


async def test_when_every_drop_sink_fails_the_job_fails() -> None:
    source = FakeSource(16, list(range(8)))
    sinks = [FakeSink("a", fail_at=1), FakeSink("b", fail_at=2)]
    with pytest.raises(TransferFailed, match="every destination failed"):
        await run(pipeline(source, sinks, Progress(), policies=["drop", "drop"]), source)


async def test_memory_permits_are_all_released_when_the_job_is_cancelled() -> None:
    memory = BlockBudget(6)
    source = FakeSource(64, list(range(64)))
    gate = asyncio.Semaphore(3)  # three blocks get through, then the sink stalls
    slow, fast = FakeSink("slow", gate=gate), FakeSink("fast")
    job = asyncio.create_task(run(pipeline(source, [slow, fast], Progress(), memory=memory,
                                           queue_blocks=4), source))
    await settle()
    assert len(slow.blocks) == 3 and slow.writing == 1
    assert memory.free == 0, "the stalled job should hold the whole budget"
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    assert memory.free == memory.units
    assert (slow.state, fast.state) == ("aborted", "aborted")


async def test_memory_permits_are_all_released_when_the_source_fails() -> None:
    memory = BlockBudget(6)
    source = FakeSource(64, list(range(64)), fail_fetch_at=20)
    with pytest.raises(TransferFailed, match="block 20 cannot be read"):
        await run(pipeline(source, [FakeSink("a"), FakeSink("b")], Progress(), memory=memory),
                  source)
    assert memory.free == memory.units


@pytest.mark.parametrize("skipping", [(False, False, False), (True, False, True),
                                      (True, True, True)])
async def test_fan_out_counts_each_block_once_whatever_the_number_of_sinks(
        skipping: tuple[bool, ...]) -> None:
    data, zeros = [1, 2, 3, 10, 11, 30], [4, 5, 20]
    source = FakeSource(40, data, zeros)
    sinks = [FakeSink(f"s{n}", skip_zeros=skip, concurrency=1 + n)
             for n, skip in enumerate(skipping)]
    progress = Progress()
    await run(pipeline(source, sinks, progress), source)
    all_skip = all(skipping)
    assert progress.blocks_listed == len(data) + len(zeros)
    assert progress.blocks_done == len(data) + len(zeros)
    assert progress.blocks_skipped == (len(zeros) if all_skip else 0)
    assert progress.bytes_done == BLOCK_SIZE * (len(data) + (0 if all_skip else len(zeros)))
    assert progress.stages["fetch"].done == len(data)  # fetched once for every sink
    assert sorted(source.fetched) == data
    for sink, skip in zip(sinks, skipping, strict=True):
        assert sorted(sink.blocks) == sorted(data + ([] if skip else zeros))
        assert sink.gaps == [Gap(0, 1), Gap(6, 10), Gap(12, 20), Gap(21, 30), Gap(31, 40)]
        assert progress.stages[f"write:{sink.name}"].done == len(data) + len(zeros) + 5


async def test_a_slow_sink_holds_the_source_back_to_the_queue_bounds() -> None:
    queue_blocks, fetchers = 2, 2
    # Listed but not yet written by the slow sink, at most: the fetch queue, the entry the
    # listing holds while it waits, one block per fetcher, the slow sink's queue, and the
    # block its writer holds.
    bound = queue_blocks + 1 + fetchers + queue_blocks + 1
    source = FakeSource(100, list(range(100)))
    gate = asyncio.Semaphore(0)
    slow, fast = FakeSink("slow", gate=gate), FakeSink("fast")
    job = asyncio.create_task(run(pipeline(source, [slow, fast], Progress(),
                                           fetch_concurrency=fetchers,
                                           queue_blocks=queue_blocks), source))
    await settle()
    assert source.listed == bound, "the listing should stop at the bound, no further"
    for written in range(1, 100):
        gate.release()
        await settle()
        assert len(slow.blocks) == written
        assert source.listed - written <= bound
        assert len(fast.blocks) - written <= bound - 1  # the fast sink waits for the slow one
    gate.release()
    await job
    assert_has_every_block(slow, list(range(100)))
    assert_has_every_block(fast, list(range(100)))
