"""Fan-out of job events to the control socket's streaming clients.

Each subscriber has a bounded queue; a client too slow to keep up loses its oldest events
(progress is a running total, so the next event makes up for a lost one).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

QUEUE_EVENTS = 256


class Subscriber:
    def __init__(self, job: str | None) -> None:
        self.job = job
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(QUEUE_EVENTS)

    def offer(self, event: dict[str, Any] | None) -> None:
        if event is not None and self.job is not None and event.get("job") != self.job:
            return
        while True:
            try:
                self.queue.put_nowait(event)
                return
            except asyncio.QueueFull:
                self.queue.get_nowait()

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        while (event := await self.queue.get()) is not None:
            yield event


class EventHub:
    def __init__(self) -> None:
        self._subscribers: set[Subscriber] = set()

    @property
    def listening(self) -> bool:
        return bool(self._subscribers)

    def subscribe(self, job: str | None = None) -> Subscriber:
        sub = Subscriber(job)
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)

    def publish(self, event: dict[str, Any]) -> None:
        for sub in list(self._subscribers):
            sub.offer(event)

    def close(self) -> None:
        """End every stream (the daemon is stopping)."""
        for sub in list(self._subscribers):
            sub.offer(None)
        self._subscribers.clear()
