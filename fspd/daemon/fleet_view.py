"""``GET /v1/fleet`` on the control socket: every job across the fleet's hosts, as
``fspd status --fleet --json`` lists it (state, owner, attempts, progress with rate and ETA,
lease, reason), from one consistent scan of the fleet's table (bounded as the CLI's,
:data:`fspd.fleet.table.MAX_LISTED` items). ``?job=PREFIX`` keeps the jobs whose id starts so.

The daemon keeps one DynamoDB client for the view, made at the first request and dropped
after a failure; one scan runs at a time (requests meanwhile wait for it, bounded by the
client's timeouts)."""

from __future__ import annotations

import asyncio
from typing import Any

from botocore.exceptions import BotoCoreError

from fspd.aws import AwsClients
from fspd.config import Settings
from fspd.errors import FspdError
from fspd.fleet.services import fleet_target
from fspd.fleet.table import JobTable, listing
from fspd.log import get_logger
from fspd.retry import ApiError, Unreachable

log = get_logger("fspd.daemon.fleet_view")
FAILURES = (FspdError, ApiError, Unreachable, BotoCoreError)


class NotInFleet(Exception):
    """The daemon's settings have no [fleet] section."""


class FleetView:
    def __init__(self) -> None:
        self._clients: AwsClients | None = None
        self._table: JobTable | None = None
        self._lock = asyncio.Lock()

    async def jobs(self, settings: Settings, prefix: str | None = None) -> dict[str, Any]:
        """The listing; :class:`NotInFleet`, or one of :data:`FAILURES` when the fleet's
        table cannot be read."""
        fleet = settings.fleet
        if fleet is None:
            raise NotInFleet()
        async with self._lock:
            try:
                if self._table is None or self._table.name != fleet.table:
                    await self.close()
                    self._clients = AwsClients(settings)
                    await self._clients.__aenter__()
                    db = await self._clients.client("dynamodb", fleet_target(fleet))
                    self._table = JobTable(db, fleet.table)
                items = await self._table.scan()
            except FAILURES:
                await self.close()
                raise
        if prefix:
            items = [i for i in items if str(i["job"]).startswith(prefix)]
        return listing(fleet.table, items)

    async def close(self) -> None:
        clients, self._clients, self._table = self._clients, None, None
        if clients is not None:
            await clients.__aexit__(None, None, None)
