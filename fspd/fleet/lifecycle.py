"""One fleet job on one host: take it from a delivery, keep its lease and message alive while
it runs, and settle it. ``fspd serve`` runs the job itself (in its worker processes); this
module is everything around that, written against a ``run(lease)`` coroutine.

- take: a malformed message, or one naming no job, goes to the dead-letter queue at once; a
  delivery of a job that is finished is a duplicate and is deleted; a job held by another
  host under a live lease is left alone (its holder deletes the message when it finishes).
- keep_alive: every ``heartbeat_s`` the lease (fenced by the attempt) and the message's
  visibility are renewed and the job's journal is saved to S3. Refused because another host
  took the job over: the job is cancelled here at once.
- settle: done → item done, message deleted. Failed → given back for another try (the message
  becomes visible again), or, at the ``max_receive_count``-th delivery, the item is marked
  dead with the reason and the message moved to the DLQ.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fspd.config import FleetSettings
from fspd.errors import Cancelled, FspdError
from fspd.fleet.checkpoints import CheckpointStore
from fspd.fleet.queue import Delivery, JobQueue
from fspd.fleet.table import DEAD, DONE, QUEUED, RUNNING, FencedOut, JobTable, Lease, NotClaimable
from fspd.fleet.table import FAILED as FAILED_STATE
from fspd.log import get_logger
from fspd.retry import ApiError, Unreachable

log = get_logger("fspd.fleet")

DONE_OUTCOME, FAILED, FENCED, SKIPPED, CANCELLED = (
    "done", "failed", "fenced", "skipped", "cancelled")
# A job's journal and the files beside it that changed since the last save (by name).
Journal = tuple[bytes, dict[str, bytes]]


@dataclass(frozen=True)
class Taken:
    delivery: Delivery
    lease: Lease
    spec: str  # the job file's text
    filename: str


class Fleet:
    """The fleet's three services as one host sees them."""

    def __init__(self, fleet: FleetSettings, table: JobTable, queue: JobQueue,
                 store: CheckpointStore, host: str,
                 clock: Callable[[], float] = time.time) -> None:
        self.fleet, self.table, self.queue, self.store = fleet, table, queue, store
        self.host, self.clock = host, clock
        # What this host did with the fleet's jobs, since it started (Prometheus counters):
        # taken, duplicate, held_elsewhere, dead_lettered, done, failed, fenced, cancelled,
        # heartbeat_failed.
        self.counts: Counter[str] = Counter()
        self._running: dict[str, asyncio.Future[Any]] = {}  # job id -> its run, on this host

    async def take(self, delivery: Delivery) -> Taken | None:
        if delivery.job_id is None:
            log.warning("fleet_message_malformed", problem=delivery.problem)
            await self.queue.dead_letter(delivery, str(delivery.problem))
            self.counts["dead_lettered"] += 1
            return None
        job = delivery.job_id
        try:
            lease = await self.table.claim(job, self.host, self.fleet.lease_s, now=self.clock())
        except NotClaimable as exc:
            item = await self.table.get(job)
            if item is None:
                await self.queue.dead_letter(delivery, f"no job {job} in table "
                                             f"{self.table.name}")
                self.counts["dead_lettered"] += 1
            elif item["state"] not in (QUEUED, RUNNING):
                log.info("fleet_duplicate_delivery", job=job, state=item["state"])
                await self.queue.delete(delivery)
                self.counts["duplicate"] += 1
            else:
                log.info("fleet_job_held_elsewhere", job=job, why=exc.why)
                self.counts["held_elsewhere"] += 1
            return None
        self.counts["taken"] += 1
        item = await self.table.get(job) or {}
        log.info("fleet_job_taken", job=job, attempt=lease.attempt,
                 delivery=delivery.receive_count)
        return Taken(delivery, lease, str(item.get("spec", "")),
                     str(item.get("filename", "job.json")))

    async def keep_alive(self, taken: Taken, journal: Callable[[], Journal | None],
                         on_fenced: Callable[[FencedOut], None],
                         progress: Callable[[], dict[str, Any]] | None = None) -> None:
        """Renew until cancelled; call ``on_fenced`` (and return) when the job was taken over.
        A renewal that fails otherwise (throttled, unreachable) is tried again next period:
        the lease outlives one missed renewal (heartbeat_s <= lease_s / 2)."""
        lease = taken.lease
        while True:
            await asyncio.sleep(self.fleet.heartbeat_s)
            try:
                lease = await self.table.heartbeat(
                    lease, self.fleet.lease_s, now=self.clock(),
                    progress=None if progress is None else progress())
                await self.queue.extend(taken.delivery, self.fleet.lease_s)
                saved = journal()
                if saved is not None:
                    await self.store.save(lease, *saved)
            except FencedOut as exc:
                log.warning("fleet_job_fenced", job=lease.job_id, attempt=lease.attempt,
                            error=str(exc))
                on_fenced(exc)
                return
            except (ApiError, Unreachable) as exc:
                log.warning("fleet_heartbeat_failed", job=lease.job_id, error=str(exc))
                self.counts["heartbeat_failed"] += 1

    async def settle(self, taken: Taken, error: FspdError | None) -> str:
        lease, delivery = taken.lease, taken.delivery
        try:
            if isinstance(error, Cancelled):  # by a user: not retried until `fleet retry`
                await self.table.finish(lease, FAILED_STATE, reason=str(error), now=self.clock())
                await self.queue.delete(delivery)
                return CANCELLED
            if error is None:
                await self.table.finish(lease, DONE, now=self.clock())
                await self.queue.delete(delivery)
                return DONE_OUTCOME
            reason = f"delivery {delivery.receive_count}: {error}"
            if delivery.receive_count >= self.fleet.max_receive_count:
                await self.table.finish(lease, DEAD, reason=reason, now=self.clock())
                await self.queue.dead_letter(delivery, reason)
            else:
                await self.table.finish(lease, QUEUED, reason=reason, now=self.clock())
                await self.queue.extend(delivery, 0)  # another host may try it now
            return FAILED
        except FencedOut as exc:  # taken over meanwhile: the new attempt settles it
            log.warning("fleet_job_fenced", job=lease.job_id, attempt=lease.attempt,
                        error=str(exc))
            return FENCED

    def cancel(self, job_id: str) -> bool:
        """Cancel the run of a job this host holds (a user's ``fspd cancel``): ``run`` there
        turns it into :class:`Cancelled`, which ends the job as failed, its message deleted
        (``fspd fleet retry`` queues it again, resuming from its checkpoint). False when this
        host is not running it."""
        job = self._running.get(job_id)
        if job is None or job.done():
            return False
        job.cancel()
        return True

    async def run(self, taken: Taken, run: Callable[[Lease], Awaitable[Any]],
                  journal: Callable[[], Journal | None] = lambda: None,
                  progress: Callable[[], dict[str, Any]] | None = None) -> str:
        """Run the taken job with its heartbeat; the outcome (done, failed, fenced or cancelled)."""
        job = asyncio.ensure_future(run(taken.lease))
        self._running[taken.lease.job_id] = job
        fenced: list[FencedOut] = []

        def stop(exc: FencedOut) -> None:
            fenced.append(exc)
            job.cancel()

        beat = asyncio.create_task(self.keep_alive(taken, journal, stop, progress))
        error: FspdError | None = None
        try:
            await job
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # cancelled from outside (the daemon is stopping)
            if fenced:
                self.counts[FENCED] += 1
                return FENCED
            # by cancel(), before the run could say so itself (it had not begun)
            error = Cancelled("cancelled before it started")
        except FspdError as exc:
            error = exc
        finally:
            self._running.pop(taken.lease.job_id, None)
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
        outcome = await self.settle(taken, error)
        self.counts[outcome] += 1
        return outcome
