"""Blocking work for the event loop, run on threads in batches: one wake-up of a thread and
one of the loop for all the items that wait, instead of one of each per item.

A hop through ``run_in_executor`` costs the loop ~30-50 us of CPU per item (a work item, a
future, a queue put that wakes a thread, then a callback that wakes the loop) and makes the
threads trade the GIL with the loop once per item. Here a thread takes every item waiting
(up to ``batch``) and hands the results back with one callback; while it works the next items
queue up, so under load the hop is paid once per batch. A second thread is woken only when
more than a batch waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

_Item = tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]


class BatchedThreads:
    """``await batched.submit(fn, *args)``: ``fn(*args)`` on one of ``threads`` threads."""

    def __init__(self, threads: int, *, batch: int, name: str) -> None:
        self.threads = threads
        self.batch = batch
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix=name)
        self._lock = threading.Lock()
        self._pending: list[_Item] = []
        self._draining = 0  # threads taking batches from _pending
        self._loop: asyncio.AbstractEventLoop | None = None

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        loop = self._loop = self._loop or asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        with self._lock:
            self._pending.append((fn, args, fut))
            wake = self._draining == 0 or (self._draining < self.threads
                                           and len(self._pending) > self.batch)
            if wake:
                self._draining += 1
        if wake:
            self._pool.submit(self._drain, loop)
        return fut

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """On a thread: run batches until nothing waits."""
        while True:
            with self._lock:
                if not self._pending:
                    self._draining -= 1
                    return
                batch = self._pending[:self.batch]
                del self._pending[:self.batch]
            results: list[tuple[bool, Any]] = []
            for fn, args, _ in batch:
                try:
                    results.append((True, fn(*args)))
                except BaseException as exc:  # (OSError, MemoryError): its awaiter gets it
                    results.append((False, exc))
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_deliver, batch, results)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _deliver(batch: list[_Item], results: list[tuple[bool, Any]]) -> None:
    for (_, _, fut), (ok, value) in zip(batch, results, strict=True):
        if fut.done():  # its awaiter was cancelled meanwhile
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)
