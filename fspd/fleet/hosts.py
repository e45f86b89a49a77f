"""Which fleet hosts are running jobs now, so that they can share the per-account EBS Direct
quota: each paces its requests at ``transfer.per_account_rps`` divided by their number.

One item of the fleet's table, ``#hosts`` (never a job id), maps each host running fleet jobs
to the end of its lease there: ``hosts.<host> = lease_until``. A host renews its entry every
``heartbeat_s`` while it runs fleet jobs, and reads the number of live entries from the same
write's answer; it removes its entry when it has none left. A host that died drops out when
its lease ends (``lease_s``); the next renewal by any host removes its entry.

One item for every host is one partition: at N hosts that is N / ``heartbeat_s`` writes a
second of an item of about 50 bytes per host (docs/fleet.md has the limits).
"""

from __future__ import annotations

import time
from typing import Any

from fspd.aws import call
from fspd.fleet.table import RESERVED_PREFIX, conditional_update

REGISTRY_KEY = f"{RESERVED_PREFIX}hosts"
MAX_PRUNED = 25  # expired entries removed per renewal


class HostRegistry:
    def __init__(self, dynamodb: Any, table: str) -> None:
        self.db, self.table = dynamodb, table

    async def _update(self, expression: str, condition: str, values: dict[str, Any] | None,
                      names: dict[str, str]) -> dict[str, Any] | None:
        """The item after a conditional update; None when the condition failed."""
        return await conditional_update(self.db, self.table, REGISTRY_KEY, expression,
                                        condition, values, names)

    async def renew(self, host: str, lease_s: float, *, now: float | None = None) -> int:
        """Record ``host`` as running fleet jobs for ``lease_s`` more; the number of hosts
        that are (this one included)."""
        now = time.time() if now is None else now
        until = {"N": repr(float(now + lease_s))}
        item = None
        for _ in range(3):  # the map is made by the first host; at most one race lost
            item = await self._update("SET hosts.#h = :until", "attribute_exists(hosts)",
                                      {":until": until}, {"#h": host})
            if item is not None:
                break
            item = await self._update("SET hosts = :map", "attribute_not_exists(hosts)",
                                      {":map": {"M": {host: until}}}, {})
            if item is not None:
                break
        entries = {h: float(v["N"]) for h, v in (item or {}).get("hosts", {}).get(
            "M", {}).items()}
        expired = [h for h, t in entries.items() if t <= now][:MAX_PRUNED]
        if expired:
            names = {f"#e{i}": h for i, h in enumerate(expired)}
            await self._update(
                "REMOVE " + ", ".join(f"hosts.{n}" for n in names),
                " AND ".join(f"hosts.{n} <= :now" for n in names),
                {":now": {"N": repr(float(now))}}, names)  # unless renewed meanwhile
        return max(1, sum(1 for t in entries.values() if t > now))

    async def leave(self, host: str) -> None:
        """Remove ``host``'s entry: it runs no fleet job now."""
        await self._update("REMOVE hosts.#h", "attribute_exists(hosts.#h)", None,
                           {"#h": host})

    async def hosts(self, *, now: float | None = None) -> dict[str, float]:
        """Live entries: host → lease end."""
        now = time.time() if now is None else now
        result = await call(self.db, "GetItem", TableName=self.table,
                            Key={"job": {"S": REGISTRY_KEY}}, ConsistentRead=True)
        entries = result.get("Item", {}).get("hosts", {}).get("M", {})
        return {h: float(v["N"]) for h, v in entries.items() if float(v["N"]) > now}
