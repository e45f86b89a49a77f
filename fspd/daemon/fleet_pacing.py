"""A fleet host's share of the per-account EBS Direct quota (``[fleet] share_account_rps``).

AWS limits GetSnapshotBlock and PutSnapshotBlock per account and region, whatever the number
of hosts; each host paces at ``transfer.per_account_rps``. In a fleet, every host running
fleet jobs renews its entry in the table's host registry (fspd/fleet/hosts.py) every
``heartbeat_s``, and at once when it starts a job, and paces its account streams at
``per_account_rps / N``, N the hosts running fleet jobs. The share lives in the workers'
shared memory (fspd/daemon/shared.py), so running jobs follow it at their next request.

A host that joins is seen by the others at their next renewal: for up to ``heartbeat_s`` the
account may get more than the quota, which the adaptive pacing (fspd/retry.py) absorbs. The
registry failing to answer keeps the last share.
"""

from __future__ import annotations

import asyncio
import contextlib

from fspd.config import FleetSettings
from fspd.daemon.scheduler import Scheduler
from fspd.fleet.hosts import HostRegistry
from fspd.log import get_logger
from fspd.retry import ApiError, Unreachable

log = get_logger("fspd.daemon.fleet")
LEAVE_TIMEOUT_S = 5.0  # a stopping host removes its entry within this, else it expires


def runs_fleet_jobs(scheduler: Scheduler) -> bool:
    return any(r.box == "fleet" for r in scheduler.running())


async def share_account_pacing(scheduler: Scheduler, registry: HostRegistry, host: str,
                               fleet: FleetSettings, wake: asyncio.Event) -> None:
    """Until cancelled: keep this host's entry while it runs fleet jobs and set its share."""
    region = scheduler.pool.region
    registered = False
    try:
        while True:
            wake.clear()
            try:
                if runs_fleet_jobs(scheduler):
                    hosts = await registry.renew(host, fleet.lease_s)
                    registered = True
                elif registered:
                    await registry.leave(host)
                    registered, hosts = False, 1
                else:
                    hosts = 1
            except (ApiError, Unreachable) as exc:
                log.warning("fleet_pacing_renewal_failed", error=str(exc))
            else:
                if region.account_share != 1.0 / hosts:
                    rps = scheduler.settings.transfer.per_account_rps
                    log.info("fleet_account_share", hosts=hosts,
                             per_account_rps=round(rps / hosts, 3))
                    region.set_account_share(1.0 / hosts)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), fleet.heartbeat_s)
    finally:
        region.set_account_share(1.0)
        if registered:
            with contextlib.suppress(ApiError, Unreachable, TimeoutError,
                                     asyncio.CancelledError):
                await asyncio.wait_for(registry.leave(host), LEAVE_TIMEOUT_S)
