"""The accounting layer: what a job has done, how fast, and where its blocks are waiting.

One :class:`Progress` per job; the pipeline and endpoints update it, the CLI progress display,
the control socket and the result files read :meth:`Progress.snapshot`.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from fspd.blocks import BLOCK_SIZE

RECENT_WINDOW_S = 10.0


@dataclass
class StageStats:
    name: str
    in_flight: int = 0
    done: int = 0
    queue_depth_fn: Any = None  # callable returning the current queue depth

    def snapshot(self) -> dict[str, Any]:
        depth = self.queue_depth_fn() if self.queue_depth_fn else 0
        return {"in_flight": self.in_flight, "done": self.done, "queue_depth": depth}


@dataclass
class Progress:
    job_id: str = ""
    state: str = "queued"
    blocks_total: int | None = None  # known once listing has finished
    blocks_listed: int = 0
    blocks_done: int = 0
    blocks_skipped: int = 0  # zero blocks not written (where skipping is safe)
    blocks_resumed: int = 0  # already done by an earlier, interrupted run
    bytes_done: int = 0
    started: float | None = None
    finished: float | None = None
    retries: Counter[str] = field(default_factory=Counter)
    errors: int = 0
    last_error: str | None = None
    snapshot_ids: dict[str, str] = field(default_factory=dict)
    stages: dict[str, StageStats] = field(default_factory=dict)
    destinations: dict[str, dict[str, Any]] = field(default_factory=dict)
    # What a failed or cancelled job left behind (a pending snapshot, a partial file), in
    # words for its error line, since a cancellation carries no message of its own.
    left_behind: list[str] = field(default_factory=list)
    _samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=64))

    def start(self) -> None:
        self.state = "running"
        self.started = time.monotonic()
        self._samples.append((self.started, 0))

    def finish(self, state: str) -> None:
        self.state = state
        self.finished = time.monotonic()

    def stage(self, name: str, queue_depth_fn: Any = None) -> StageStats:
        stats = self.stages.get(name)
        if stats is None:
            stats = self.stages[name] = StageStats(name, queue_depth_fn=queue_depth_fn)
        return stats

    def block_done(self, nbytes: int = BLOCK_SIZE, *, skipped: bool = False) -> None:
        self.blocks_done += 1
        if skipped:
            self.blocks_skipped += 1
        else:
            self.bytes_done += nbytes
        now = time.monotonic()
        if not self._samples or now - self._samples[-1][0] >= 0.25:
            self._samples.append((now, self.bytes_done))

    def retry(self, kind: str) -> None:
        self.retries[kind] += 1

    def error(self, message: str) -> None:
        self.errors += 1
        self.last_error = message

    @property
    def elapsed(self) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or time.monotonic()) - self.started

    def rates(self) -> tuple[float, float]:
        """(average, recent) bytes per second."""
        elapsed = self.elapsed
        average = self.bytes_done / elapsed if elapsed > 0 else 0.0
        now = time.monotonic()
        recent = average
        for t, b in self._samples:
            if now - t <= RECENT_WINDOW_S and now - t > 0.5:
                recent = (self.bytes_done - b) / (now - t)
                break
        return average, recent

    def eta(self) -> float | None:
        if self.blocks_total is None or self.blocks_done == 0 or self.finished:
            return None
        remaining = self.blocks_total - self.blocks_done
        per_block = self.elapsed / self.blocks_done
        return max(0.0, remaining * per_block)

    def snapshot(self) -> dict[str, Any]:
        average, recent = self.rates()
        total = self.blocks_total
        return {
            "job_id": self.job_id,
            "state": self.state,
            "blocks_done": self.blocks_done,
            "blocks_total": total,
            "blocks_listed": self.blocks_listed,
            "blocks_skipped": self.blocks_skipped,
            "blocks_resumed": self.blocks_resumed,
            "bytes_done": self.bytes_done,
            "bytes_total": None if total is None else total * BLOCK_SIZE,
            "elapsed_s": round(self.elapsed, 3),
            "rate_avg_bps": round(average),
            "rate_recent_bps": round(recent),
            "eta_s": None if (eta := self.eta()) is None else round(eta, 1),
            "stages": {name: s.snapshot() for name, s in self.stages.items()},
            "retries": dict(self.retries),
            "errors": self.errors,
            "last_error": self.last_error,
            "snapshot_ids": dict(self.snapshot_ids),
            "destinations": {k: dict(v) for k, v in self.destinations.items()},
        }
