"""The fleet spool directory (``[fleet] spool_dir``): a job file dropped there on any host is
enqueued into the fleet, as ``fspd submit --fleet`` does (fspd/fleet/enqueue.py: item first,
then message); the job then runs on whichever host takes it, maybe this one.

The same boxes and the same safe handling as the local spool (fspd/daemon/spool.py): a file is
claimed by a rename from new/ into active/ under ``flock`` (two daemons sharing the directory
never both take it), read whole (no symlinks, size bounded) and moved on, never deleted:

- enqueued: into done/, beside ``NAME.result.json`` (``"state": "enqueued"``, ``fleet_job``:
  the fleet's job id). done/ means *enqueued*; the job's own outcome is in the fleet's table.
- refused (a bad job, or a job id already in the table): into failed/, beside
  ``NAME.error.json`` naming the field (``JobExists`` for a duplicate).
- the fleet's services fail (unreachable, throttled, not created): the file stays in active/,
  unlocked, and is tried again after a pause. A file found so is an enqueue cut short: its
  item may be written already, so it is resumed (:func:`fspd.fleet.enqueue.enqueue`).
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError

from fspd.daemon.fleet import ERROR_PAUSE_S
from fspd.daemon.spool import Spool
from fspd.daemon.watch import DirWatcher
from fspd.errors import BadInput, FspdError
from fspd.fleet.enqueue import enqueue
from fspd.fleet.queue import JobQueue
from fspd.fleet.services import open_services
from fspd.fleet.table import JobTable
from fspd.log import get_logger
from fspd.retry import ApiError, Unreachable

if TYPE_CHECKING:
    from fspd.daemon.service import Service

log = get_logger("fspd.daemon.fleet_spool")
_SERVICE_ERRORS = (ApiError, Unreachable, BotoCoreError)
TMP_CLEAN_INTERVAL_S = 3600.0


class FleetSpool:
    """One pass over the fleet spool with the fleet's table and queue."""

    def __init__(self, spool: Spool, table: JobTable, queue: JobQueue, limit: int) -> None:
        self.spool, self.table, self.queue, self.limit = spool, table, queue, limit

    async def scan(self) -> None:
        """Enqueue what waits: enqueues cut short (active/, nobody holding them) first, then
        new/ oldest first. The fleet's services failing stops the pass (the caller pauses)."""
        await self.queue.url(self.queue.fleet.queue)  # a missing queue fails here, not per file
        for entry in self.spool.entries("active"):
            if entry.kind != "file":
                self._finish("active", entry.name, None, "failed", _refused(
                    entry.name, BadInput("is not a regular file (symlinks are not followed)",
                                         field="(file)")))
                continue
            fd = self.spool.lock("active", entry.name)
            if fd is not None:  # else another daemon is enqueueing it
                await self._enqueue(entry.name, fd, resume=True)
        for entry in self.spool.entries("new"):
            if entry.kind != "file":
                self._finish("new", entry.name, None, "failed", _refused(entry.name, BadInput(
                    "is a symlink; job files in the spool must be regular files (not "
                    "followed)" if entry.kind == "symlink" else "is not a regular file",
                    field="(file)")))
                continue
            fd = self.spool.claim(entry.name)
            if fd is not None:  # else another daemon took it
                await self._enqueue(entry.name, fd, resume=False)

    async def _enqueue(self, name: str, fd: int, *, resume: bool) -> None:
        try:
            data = await self.spool.read("active", name, self.limit)
            done = await enqueue(self.table, self.queue, data, name, resume=resume)
        except BadInput as exc:  # a bad job, or its id is taken (JobExists)
            self._finish("active", name, fd, "failed", _refused(name, exc))
        except BaseException:  # the services failed: left in active/, resumed next pass
            os.close(fd)
            raise
        else:
            log.info("fleet_spool_enqueued", file=name, job=done.job_id, resent=done.resent)
            self._finish("active", name, fd, "done", {
                "job": name, "state": "enqueued", "fleet_job": done.job_id,
                "message_id": done.message_id, "enqueued_at": time.time(),
                "table": self.table.name, "queue": self.queue.fleet.queue})

    def _finish(self, box: str, name: str, fd: int | None, dst: str,
                record: dict[str, Any]) -> None:
        try:
            final = self.spool.finish(box, name, dst, record)
        except OSError as exc:
            log.error("spool_move_failed", spool=str(self.spool.root), job=name,
                      error=str(exc))
            return
        finally:
            if fd is not None:
                os.close(fd)
        if dst == "failed":
            log.warning("fleet_spool_refused", file=final, field=record.get("field"),
                        error=record.get("message"))


def _refused(name: str, exc: FspdError) -> dict[str, Any]:
    return {**exc.to_dict(), "job": name, "state": "refused", "failed_at": time.time()}


async def watch_fleet_spool(service: Service, spool: Spool, watcher: DirWatcher) -> None:
    """Until cancelled: a pass on every wake-up of ``watcher`` (new/), and at least every
    rescan (or poll) interval; the fleet's services failing is logged and tried again after a
    pause, the files waiting where they are."""
    fleet = service.settings.fleet
    assert fleet is not None
    cleaned = -math.inf
    while True:
        try:
            async with open_services(service.settings, fleet) as svc:
                passes = FleetSpool(spool, JobTable(svc.dynamodb, fleet.table),
                                    JobQueue(svc.sqs, fleet),
                                    service.settings.daemon.max_job_file_bytes)
                log.info("fleet_spool_watching", spool=str(spool.root), table=fleet.table,
                         queue=fleet.queue)
                while True:
                    await passes.scan()
                    s = service.settings.daemon
                    if time.monotonic() - cleaned >= min(TMP_CLEAN_INTERVAL_S,
                                                         s.stale_tmp_after_s):
                        cleaned = time.monotonic()  # writers that died half way, as spool's
                        if removed := spool.clean_tmp(s.stale_tmp_after_s):
                            log.info("stale_tmp_removed", spool=str(spool.root), files=removed)
                    passes.limit = s.max_job_file_bytes
                    await watcher.wait(s.rescan_interval_s if watcher.using_inotify
                                       else min(s.poll_interval_s, s.rescan_interval_s))
        except (FspdError, *_SERVICE_ERRORS) as exc:
            log.error("fleet_spool_unavailable", error=str(exc), retry_in_s=ERROR_PAUSE_S)
        except OSError as exc:
            log.error("fleet_spool_scan_failed", error=str(exc), retry_in_s=ERROR_PAUSE_S)
        await asyncio.sleep(ERROR_PAUSE_S)
