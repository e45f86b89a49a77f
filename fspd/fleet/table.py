"""The fleet's job table: one DynamoDB item per job.

A host *claims* a job with a conditional update (the job has no owner, or its lease has
expired) that sets the owner, ``attempt + 1`` and the lease. The attempt number is a fencing
token: every later write for the job (heartbeat, progress, checkpoint, final state) is
conditional on ``owner`` and ``attempt`` still being this host's, so a host that lost its job
(paused past its lease, partitioned) has every write refused with :class:`FencedOut`.

Times are wall-clock seconds (``time.time()``), passed in so that leases can be tested without
waiting; hosts' clocks are assumed to agree to well under a lease (NTP).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from fspd.aws import call
from fspd.errors import BadInput, Cancelled
from fspd.retry import ApiError

QUEUED, RUNNING, DONE, FAILED, DEAD = "queued", "running", "done", "failed", "dead"
STATES = (QUEUED, RUNNING, DONE, FAILED, DEAD)
MAX_LISTED = 100_000  # bound on `fspd status --fleet`'s scan
# Keys of the table's own items (fspd/fleet/hosts.py); never a job id ([A-Za-z0-9._-]).
RESERVED_PREFIX = "#"
_CONFLICT = "ConditionalCheckFailedException"


class FencedOut(Cancelled):
    """This host's attempt at a job is no longer the current one: its write was refused."""


class JobExists(BadInput):
    """A job of that id is already in the fleet's table."""


class NotClaimable(Exception):
    """The job is owned under a live lease, finished, or unknown; ``why`` says which."""

    def __init__(self, job_id: str, why: str) -> None:
        super().__init__(f"{job_id}: {why}")
        self.job_id, self.why = job_id, why


@dataclass(frozen=True)
class Lease:
    """One host's hold on one attempt of a job."""

    job_id: str
    owner: str
    attempt: int
    until: float


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _n(value: float) -> dict[str, str]:
    return {"N": repr(value) if isinstance(value, float) else str(value)}


def item_to_dict(item: dict[str, Any]) -> dict[str, Any]:
    """A table item as plain values (strings, numbers; ``progress`` decoded)."""
    out: dict[str, Any] = {}
    for key, typed in item.items():
        (kind, value), = typed.items()
        out[key] = (float(value) if "." in value or "e" in value else int(value)) \
            if kind == "N" else value
    if isinstance(out.get("progress"), str):
        out["progress"] = json.loads(out["progress"])
    return out


async def conditional_update(db: Any, table: str, key: str, expression: str, condition: str,
                             values: dict[str, Any] | None, names: dict[str, str] | None
                             ) -> dict[str, Any] | None:
    """UpdateItem of the item ``key`` under ``condition``: its attributes afterwards (in
    DynamoDB's typed form), or None when the condition failed."""
    params: dict[str, Any] = {
        "TableName": table, "Key": {"job": _s(key)}, "UpdateExpression": expression,
        "ConditionExpression": condition, "ReturnValues": "ALL_NEW"}
    if values:
        params["ExpressionAttributeValues"] = values
    if names:
        params["ExpressionAttributeNames"] = names
    try:
        result = await call(db, "UpdateItem", **params)
    except ApiError as exc:
        if exc.code == _CONFLICT:
            return None
        raise
    return dict(result.get("Attributes", {}))


class JobTable:
    def __init__(self, dynamodb: Any, name: str) -> None:
        self.db, self.name = dynamodb, name

    async def _update(self, job_id: str, expression: str, condition: str,
                      values: dict[str, Any], names: dict[str, str] | None = None
                      ) -> dict[str, Any] | None:
        """The item after a conditional update; None when the condition failed."""
        item = await conditional_update(self.db, self.name, job_id, expression, condition,
                                        values, names)
        return None if item is None else item_to_dict(item)

    async def get(self, job_id: str) -> dict[str, Any] | None:
        if job_id.startswith(RESERVED_PREFIX):  # the table's own items (fleet/hosts.py)
            return None
        result = await call(self.db, "GetItem", TableName=self.name, Key={"job": _s(job_id)},
                            ConsistentRead=True)
        return item_to_dict(result["Item"]) if "Item" in result else None

    async def put_new(self, job_id: str, spec: str, *, filename: str = "job.json",
                      now: float | None = None) -> None:
        """Record a new job, queued: its job file's text and name (which says TOML or JSON);
        :class:`JobExists` if the id is taken."""
        now = time.time() if now is None else now
        try:
            await call(self.db, "PutItem", TableName=self.name, Item={
                "job": _s(job_id), "state": _s(QUEUED), "spec": _s(spec),
                "filename": _s(filename), "attempt": _n(0), "submitted": _n(now),
                "updated": _n(now)},
                ConditionExpression="attribute_not_exists(job)")
        except ApiError as exc:
            if exc.code == _CONFLICT:
                raise JobExists(f"job {job_id} is already in the fleet's table {self.name}",
                                field="job") from None
            raise

    async def claim(self, job_id: str, owner: str, lease_s: float, *,
                    now: float | None = None) -> Lease:
        """Take the job for a new attempt: it is queued or running, and has no owner or its
        owner's lease has expired. :class:`NotClaimable` otherwise."""
        now = time.time() if now is None else now
        item = await self._update(
            job_id,
            "SET #o = :o, attempt = attempt + :one, lease_until = :until, #s = :running, "
            "updated = :now",
            "attribute_exists(job) AND #s IN (:queued, :running) AND "
            "(attribute_not_exists(#o) OR lease_until < :now)",
            {":o": _s(owner), ":one": _n(1), ":until": _n(now + lease_s), ":now": _n(now),
             ":running": _s(RUNNING), ":queued": _s(QUEUED)},
            {"#o": "owner", "#s": "state"})
        if item is None:
            raise NotClaimable(job_id, await self._why_not(job_id, now))
        return Lease(job_id, owner, int(item["attempt"]), float(item["lease_until"]))

    async def _why_not(self, job_id: str, now: float) -> str:
        item = await self.get(job_id)
        if item is None:
            return "no such job in the table"
        if item["state"] not in (QUEUED, RUNNING):
            return f"it is {item['state']}"
        return (f"held by {item.get('owner')} (attempt {item['attempt']}) for another "
                f"{max(0.0, float(item.get('lease_until', now)) - now):.0f} s")

    async def _fenced(self, lease: Lease, expression: str, values: dict[str, Any],
                      names: dict[str, str] | None = None) -> dict[str, Any]:
        item = await self._update(lease.job_id, expression, "#o = :me AND attempt = :a",
                                  {**values, ":me": _s(lease.owner), ":a": _n(lease.attempt)},
                                  {"#o": "owner", **(names or {})})
        if item is None:
            raise await self._fenced_out(lease)
        return item

    async def _fenced_out(self, lease: Lease) -> FencedOut:
        item = await self.get(lease.job_id) or {}
        now_held = (f"attempt {item.get('attempt')} by {item.get('owner')} holds it now"
                    if item.get("owner") else f"it is {item.get('state', 'gone')} now")
        return FencedOut(f"job {lease.job_id}: attempt {lease.attempt} on {lease.owner} was "
                         f"superseded ({now_held}); its writes are refused")

    async def heartbeat(self, lease: Lease, lease_s: float, *, now: float | None = None,
                        progress: dict[str, Any] | None = None) -> Lease:
        """Extend the lease (and write the progress summary in the same request);
        :class:`FencedOut` if another attempt has taken the job."""
        now = time.time() if now is None else now
        values = {":until": _n(now + lease_s), ":now": _n(now)}
        expression = "SET lease_until = :until, updated = :now"
        if progress is not None:
            expression += ", progress = :p"
            values[":p"] = _s(json.dumps(progress, sort_keys=True))
        item = await self._fenced(lease, expression, values)
        return Lease(lease.job_id, lease.owner, lease.attempt, float(item["lease_until"]))

    async def record(self, lease: Lease, *, progress: dict[str, Any] | None = None,
                     checkpoint_key: str | None = None, now: float | None = None) -> None:
        """Write progress and/or the checkpoint's key, fenced by the attempt."""
        now = time.time() if now is None else now
        sets, values = ["updated = :now"], {":now": _n(now)}
        if progress is not None:
            sets.append("progress = :p")
            values[":p"] = _s(json.dumps(progress, sort_keys=True))
        if checkpoint_key is not None:
            sets.append("checkpoint_key = :k")
            values[":k"] = _s(checkpoint_key)
        await self._fenced(lease, "SET " + ", ".join(sets), values)

    async def finish(self, lease: Lease, state: str, *, reason: str = "",
                     now: float | None = None) -> None:
        """End the attempt: ``done``, ``failed`` or ``dead`` (with why), or ``queued`` to give
        the job back for another host; fenced by the attempt. The owner is cleared."""
        if state not in STATES or state == RUNNING:
            raise ValueError(f"cannot finish in state {state!r}")
        now = time.time() if now is None else now
        await self._fenced(lease, "SET #s = :s, reason = :r, updated = :now "
                           "REMOVE lease_until, #o",
                           {":s": _s(state), ":r": _s(reason), ":now": _n(now)},
                           {"#s": "state"})

    async def mark_dead(self, job_id: str, reason: str, *, now: float | None = None) -> bool:
        """Record that a job's message went to the dead-letter queue, and why, unless the job
        is done. False when there is no such job or it is done."""
        now = time.time() if now is None else now
        return await self._update(
            job_id, "SET #s = :dead, reason = :r, updated = :now REMOVE lease_until, #o",
            "attribute_exists(job) AND #s <> :done",
            {":dead": _s(DEAD), ":r": _s(reason), ":now": _n(now), ":done": _s(DONE)},
            {"#s": "state", "#o": "owner"}) is not None

    async def requeue(self, job_id: str, *, now: float | None = None) -> dict[str, Any]:
        """A dead or failed job queued again (``fspd fleet retry``), or a queued one nobody
        holds (its message was lost); BadInput otherwise."""
        now = time.time() if now is None else now
        item = await self._update(
            job_id, "SET #s = :queued, updated = :now REMOVE reason, lease_until, #o",
            "attribute_exists(job) AND (#s IN (:dead, :failed) OR "
            "(#s = :queued AND attribute_not_exists(#o)))",
            {":queued": _s(QUEUED), ":now": _n(now), ":dead": _s(DEAD), ":failed": _s(FAILED)},
            {"#s": "state", "#o": "owner"})
        if item is None:
            current = await self.get(job_id)
            why = "no such job" if current is None else f"it is {current['state']}"
            raise BadInput(f"cannot retry {job_id}: {why} (dead, failed and unclaimed queued "
                           "jobs are retried)", field="job")
        return item

    async def scan(self, limit: int = MAX_LISTED) -> list[dict[str, Any]]:
        """Every job (at most ``limit``), by submission time."""
        items: list[dict[str, Any]] = []
        params: dict[str, Any] = {"TableName": self.name, "ConsistentRead": True}
        while len(items) < limit:
            page = await call(self.db, "Scan", **params)
            items += [item_to_dict(i) for i in page.get("Items", [])
                      if not i["job"]["S"].startswith(RESERVED_PREFIX)]
            if "LastEvaluatedKey" not in page:
                break
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return sorted(items[:limit], key=lambda i: (i.get("submitted", 0), i["job"]))


def listing(table: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    """Every job as ``fspd status --fleet --json`` and the control socket's ``GET /v1/fleet``
    list it: the item without its job file's text."""
    return {"table": table, "jobs": [{k: v for k, v in i.items() if k != "spec"}
                                     for i in items]}
