"""The accounting layer: what a job has done, how fast, and where its blocks are waiting.

One :class:`Progress` per job; the pipeline and endpoints update it, the CLI progress display,
the control socket and the result files read :meth:`Progress.snapshot`.

The exact number of blocks is known only when listing ends, which (listing being paced by the
bounded fetch queue) is near the end of the job. Until then :meth:`Progress.total` estimates
it from the listing's density so far: the blocks listed over the share of the volume's block
index already listed. A source that knows its count at once (a file: one entry per block, and
its allocated extents say which need reading) reports it with :meth:`Progress.expect`.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from fspd.blocks import BLOCK_SIZE

RECENT_WINDOW_S = 10.0
MAX_ESTIMATED_PERCENT = 99.0  # an estimate never claims to be done


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
    blocks_total: int | None = None  # exact: when listing has finished, or the source knew
    blocks_listed: int = 0
    volume_blocks: int | None = None  # the block index range of the volume being listed
    list_position: int = 0  # blocks of that index range the listing has covered so far
    data_blocks_expected: int | None = None  # blocks to read (a file's allocated extents)
    listing_only: bool = False  # the job only lists (list, diff, dry runs): percent of listing
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
    paused_since: float | None = None
    paused_s: float = 0.0  # time spent paused before ``paused_since``
    _samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=64))

    def start(self) -> None:
        self.state = "running"
        self.started = time.monotonic()
        self._samples.append((self.started, 0))

    def finish(self, state: str) -> None:
        self.state = state
        self.finished = time.monotonic()

    def pause(self) -> None:
        if self.paused_since is None:
            self.paused_since = time.monotonic()

    def resume(self) -> None:
        if self.paused_since is None:
            return
        now = time.monotonic()
        self.paused_s += now - max(self.paused_since, self.started or now)
        self.paused_since = None
        self._samples.clear()  # the recent rate restarts; the pause is not part of it
        self._samples.append((now, self.bytes_done))

    @property
    def paused(self) -> bool:
        return self.paused_since is not None

    def expect(self, blocks: int, *, data_blocks: int | None = None) -> None:
        """The source knows its exact block count before listing (and, maybe, how many of
        them hold data to read)."""
        self.blocks_total = blocks
        self.data_blocks_expected = data_blocks

    def listed_to(self, position: int) -> None:
        """The listing has covered the volume's block index up to ``position``."""
        self.list_position = max(self.list_position, position)

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

    @property
    def active_elapsed(self) -> float:
        """Time spent running, without the time spent paused."""
        paused = self.paused_s
        if self.paused_since is not None and self.started is not None:
            end = self.finished or time.monotonic()
            paused += max(0.0, end - max(self.paused_since, self.started))
        return max(0.0, self.elapsed - paused)

    def rates(self) -> tuple[float, float]:
        """(average while running, recent) bytes per second; recent is 0 while paused."""
        elapsed = self.active_elapsed
        average = self.bytes_done / elapsed if elapsed > 0 else 0.0
        if self.paused:
            return average, 0.0
        now = time.monotonic()
        recent = average
        for t, b in self._samples:
            if now - t <= RECENT_WINDOW_S and now - t > 0.5:
                recent = (self.bytes_done - b) / (now - t)
                break
        return average, recent

    def total(self) -> tuple[int | None, bool]:
        """(blocks in the job, whether that is an estimate); (None, False) when nothing is
        known yet. The estimate extrapolates the blocks listed so far over the share of the
        volume's block index they cover."""
        if self.blocks_total is not None:
            return self.blocks_total, False
        if not self.volume_blocks or self.list_position <= 0 or self.blocks_listed <= 0:
            return None, False
        covered = min(self.list_position, self.volume_blocks)
        estimate = -(-self.blocks_listed * self.volume_blocks // covered)
        return max(estimate, self.blocks_listed, self.blocks_done), True

    def percent(self) -> float | None:
        total, estimated = self.total()
        if self.listing_only:  # list, diff, dry runs: the listing is the whole job
            if total is not None and not estimated:
                done = 1.0 if total == 0 else self.blocks_listed / total
            elif self.volume_blocks and self.list_position > 0:
                done = min(self.list_position, self.volume_blocks) / self.volume_blocks
            else:
                return None
        elif total is None:
            return None
        else:
            done = 1.0 if total == 0 else self.blocks_done / total
        percent = min(100.0, 100.0 * done)
        return min(percent, MAX_ESTIMATED_PERCENT) if estimated else percent

    def eta(self) -> float | None:
        """Seconds left at the average pace so far; None while paused or unknown. With a count
        of blocks to read (a file's extents), the pace is that of blocks read: holes and
        zero blocks cost next to nothing, so counting them would skew it."""
        if self.finished or self.paused:
            return None
        if self.listing_only:
            percent = self.percent()
            if not percent:
                return None
            return self.active_elapsed * (100.0 - percent) / percent
        total, _estimated = self.total()
        if total is None or self.blocks_done == 0:
            return None
        done, remaining = self.blocks_done, total - self.blocks_done
        fetch = self.stages.get("fetch")
        if (self.data_blocks_expected is not None and fetch is not None and fetch.done > 0
                and not self.blocks_resumed):
            done, remaining = fetch.done, self.data_blocks_expected - fetch.done
        return max(0.0, remaining * self.active_elapsed / done)

    def estimate(self) -> dict[str, Any]:
        """The fields every progress view shows: total (exact or estimated), percent, ETA."""
        total, estimated = self.total()
        percent = self.percent()
        eta = self.eta()
        return {
            "blocks_total": self.blocks_total,
            "blocks_total_estimate": total,
            "total_estimated": estimated,
            "percent": None if percent is None else round(percent, 1),
            "eta_s": None if eta is None else round(eta, 1),
            "paused": self.paused,
            "listing_only": self.listing_only,
            "blocks_listed": self.blocks_listed,
        }

    def snapshot(self) -> dict[str, Any]:
        average, recent = self.rates()
        total = self.blocks_total
        return {
            "job_id": self.job_id,
            "state": "paused" if self.paused and self.state == "running" else self.state,
            "blocks_done": self.blocks_done,
            **self.estimate(),
            "blocks_listed": self.blocks_listed,
            "volume_blocks": self.volume_blocks,
            "list_position": self.list_position,
            "blocks_skipped": self.blocks_skipped,
            "blocks_resumed": self.blocks_resumed,
            "bytes_done": self.bytes_done,
            "bytes_total": None if total is None else total * BLOCK_SIZE,
            "elapsed_s": round(self.elapsed, 3),
            "rate_avg_bps": round(average),
            "rate_recent_bps": round(recent),
            "stages": {name: s.snapshot() for name, s in self.stages.items()},
            "retries": dict(self.retries),
            "errors": self.errors,
            "last_error": self.last_error,
            "snapshot_ids": dict(self.snapshot_ids),
            "destinations": {k: dict(v) for k, v in self.destinations.items()},
        }
