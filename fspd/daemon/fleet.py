"""``fspd serve`` with a ``[fleet]`` section: take jobs from the fleet's SQS queue whenever a
slot is free (after the local spool's waiting jobs), long-polling, and run them beside the
spool's jobs (fspd/fleet/lifecycle.py keeps their lease; the scheduler runs them)."""

from __future__ import annotations

import asyncio
import contextlib
import os

from botocore.exceptions import BotoCoreError

from fspd import jobs
from fspd.config import Settings
from fspd.daemon.fleet_pacing import share_account_pacing
from fspd.daemon.scheduler import Scheduler
from fspd.errors import BadInput, FspdError
from fspd.fleet.checkpoints import CheckpointStore
from fspd.fleet.hosts import HostRegistry
from fspd.fleet.lifecycle import Fleet
from fspd.fleet.queue import JobQueue
from fspd.fleet.services import open_services
from fspd.fleet.table import DEAD, JobTable
from fspd.log import get_logger
from fspd.retry import ApiError, Unreachable

log = get_logger("fspd.daemon.fleet")
ERROR_PAUSE_S = 5.0  # after the fleet's services failed to answer


def host_id(name: str) -> str:
    """This daemon in the table's ``owner``: its fleet host name (``[fleet] host``) and pid
    (two daemons on one host are two owners)."""
    return f"{name}:{os.getpid()}"


async def draw_jobs(scheduler: Scheduler, settings: Settings) -> None:
    """Until cancelled: receive as many jobs as there are free slots, and start them. The
    fleet's services failing (a queue not created, no credentials) is logged and tried again
    after a pause; the daemon's spool keeps working meanwhile."""
    while True:
        try:
            await _draw(scheduler, settings)
        except (FspdError, ApiError, Unreachable, BotoCoreError) as exc:
            log.error("fleet_unavailable", error=str(exc), retry_in_s=ERROR_PAUSE_S)
            await asyncio.sleep(ERROR_PAUSE_S)


async def _draw(scheduler: Scheduler, settings: Settings) -> None:
    fleet = settings.fleet
    assert fleet is not None
    async with open_services(settings, fleet) as svc:
        table = JobTable(svc.dynamodb, fleet.table)
        host = Fleet(fleet, table, JobQueue(svc.sqs, fleet),
                     CheckpointStore(svc.s3, fleet, table), host_id(fleet.host))
        scheduler.fleet_host = host
        log.info("fleet_joined", queue=fleet.queue, table=fleet.table, host=host.host)
        started = asyncio.Event()  # a fleet job started: renew this host's pacing share now
        pacing = asyncio.create_task(share_account_pacing(
            scheduler, HostRegistry(svc.dynamodb, fleet.table), host.host, fleet, started)
        ) if fleet.share_account_rps else None
        try:
            await _take_jobs(scheduler, settings, host, table, started)
        finally:
            if pacing is not None:
                pacing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pacing


async def _take_jobs(scheduler: Scheduler, settings: Settings, host: Fleet, table: JobTable,
                     started: asyncio.Event) -> None:
    while True:
        scheduler.slot_freed.clear()  # before counting: a job ending after it sets it
        free = scheduler.free_slots()
        if free <= 0:
            with contextlib.suppress(TimeoutError):  # the timeout: a safety net only
                await asyncio.wait_for(scheduler.slot_freed.wait(),
                                       settings.daemon.poll_interval_s)
            continue
        try:
            for delivery in await host.queue.receive(free):
                taken = await host.take(delivery)
                if taken is None:
                    continue
                try:
                    spec = jobs.parse(taken.spec.encode(), taken.filename, fleet=True)
                except BadInput as exc:  # checked at submit: a job edited in the table
                    await table.finish(taken.lease, DEAD, reason=str(exc))
                    await host.queue.dead_letter(delivery, str(exc))
                    continue
                scheduler.start_fleet_job(host, taken, spec)
                started.set()
        except (ApiError, Unreachable) as exc:
            if isinstance(exc, ApiError) and "NonExistentQueue" in exc.code:
                raise
            log.warning("fleet_receive_failed", error=str(exc))
            await asyncio.sleep(ERROR_PAUSE_S)
