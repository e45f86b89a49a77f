"""fspd/batched.py: blocking work on threads, handed over in batches."""

from __future__ import annotations

import asyncio
import threading

import pytest

from fspd.batched import BatchedThreads


async def test_items_waiting_while_the_thread_works_go_over_as_one_batch() -> None:
    batched = BatchedThreads(1, batch=8, name="test-batched")
    gate = threading.Event()
    batches: list[int] = []  # the thread's view: how many items each hand-over carried
    loop = asyncio.get_running_loop()
    wakeups = 0
    real = loop.call_soon_threadsafe

    def counting(*args: object) -> asyncio.Handle:
        nonlocal wakeups
        wakeups += 1
        return real(*args)  # type: ignore[arg-type]

    loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
    try:
        first = batched.submit(gate.wait, 10)  # holds the thread until the rest are queued
        rest = [batched.submit(lambda i=i: i * i) for i in range(8)]
        gate.set()
        assert await first is True
        assert await asyncio.gather(*rest) == [i * i for i in range(8)]
        batches.append(wakeups)
    finally:
        loop.call_soon_threadsafe = real  # type: ignore[method-assign]
        batched.close()
    assert batches == [2]  # the first item, then the 8 queued behind it in one hand-over


async def test_an_item_that_raises_fails_only_its_own_awaiter() -> None:
    batched = BatchedThreads(1, batch=4, name="test-batched")
    gate = threading.Event()

    def boom() -> None:
        raise OSError(28, "No space left on device")

    try:
        first = batched.submit(gate.wait, 10)
        good, bad, after = (batched.submit(lambda: "a"), batched.submit(boom),
                            batched.submit(lambda: "b"))
        gate.set()
        await first
        assert await good == "a"
        with pytest.raises(OSError, match="No space"):
            await bad
        assert await after == "b"
    finally:
        batched.close()


async def test_close_waits_for_the_queued_items() -> None:
    batched = BatchedThreads(1, batch=2, name="test-batched")
    done: list[int] = []
    gate = threading.Event()
    batched.submit(gate.wait, 10)
    for i in range(5):
        batched.submit(done.append, i)
    gate.set()
    batched.close()  # as a file sink does before it closes the descriptor the items write to
    assert done == [0, 1, 2, 3, 4]
