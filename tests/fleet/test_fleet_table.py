"""The job table's conditions, against DynamoDB on moto: one owner per attempt, and a host
whose attempt was superseded has every write refused (the attempt is a fencing token)."""

from __future__ import annotations

import asyncio

import pytest

from fspd.fleet.services import Services
from fspd.fleet.table import DEAD, DONE, QUEUED, FencedOut, JobExists, JobTable, NotClaimable

LEASE = 60.0
T0 = 1_800_000_000.0


@pytest.fixture
def table(services: Services) -> JobTable:
    return JobTable(services.dynamodb, services.fleet.table)


async def test_a_job_id_is_put_once(table: JobTable) -> None:
    await table.put_new("job-1", "{}", now=T0)
    with pytest.raises(JobExists, match="job-1 is already"):
        await table.put_new("job-1", '{"other": 1}', now=T0)
    assert (await table.get("job-1"))["spec"] == "{}"


async def test_two_hosts_claiming_the_same_job_exactly_one_wins(table: JobTable) -> None:
    await table.put_new("job-1", "{}", now=T0)
    results = await asyncio.gather(
        *(table.claim("job-1", f"host-{i}", LEASE, now=T0) for i in range(4)),
        return_exceptions=True)
    won = [r for r in results if not isinstance(r, BaseException)]
    lost = [r for r in results if isinstance(r, NotClaimable)]
    assert len(won) == 1 and len(lost) == 3, results
    assert won[0].attempt == 1
    assert all("held by " + won[0].owner in r.why for r in lost)
    item = await table.get("job-1")
    assert (item["owner"], item["attempt"], item["state"]) == (won[0].owner, 1, "running")


async def test_after_the_lease_expires_another_host_takes_over_and_the_old_is_fenced(
        table: JobTable) -> None:
    await table.put_new("job-1", "{}", now=T0)
    old = await table.claim("job-1", "host-a", LEASE, now=T0)
    old = await table.heartbeat(old, LEASE, now=T0 + 30)  # renewed: not claimable yet
    with pytest.raises(NotClaimable, match="held by host-a"):
        await table.claim("job-1", "host-b", LEASE, now=T0 + LEASE + 1)
    new = await table.claim("job-1", "host-b", LEASE, now=T0 + 30 + LEASE + 1)
    assert new.attempt == old.attempt + 1 == 2

    for stale_write in (table.heartbeat(old, LEASE, now=T0 + 100),
                        table.record(old, progress={"done": 1}, now=T0 + 100),
                        table.record(old, checkpoint_key="k", now=T0 + 100),
                        table.finish(old, DONE, now=T0 + 100)):
        with pytest.raises(FencedOut, match="attempt 1 on host-a was superseded "
                                            r"\(attempt 2 by host-b holds it now\)"):
            await stale_write
    item = await table.get("job-1")
    assert (item["state"], item["owner"], item["attempt"]) == ("running", "host-b", 2)
    assert "progress" not in item and "checkpoint_key" not in item

    await table.record(new, progress={"bytes": 5}, checkpoint_key="k2", now=T0 + 101)
    await table.finish(new, DONE, now=T0 + 102)
    item = await table.get("job-1")
    assert (item["state"], item["progress"], item["checkpoint_key"]) == (DONE, {"bytes": 5},
                                                                          "k2")
    with pytest.raises(NotClaimable, match="it is done"):
        await table.claim("job-1", "host-c", LEASE, now=T0 + 10_000)


async def test_a_dead_letter_reason_is_kept_and_retry_queues_the_job_again(
        table: JobTable) -> None:
    await table.put_new("job-1", "{}", now=T0)
    lease = await table.claim("job-1", "host-a", LEASE, now=T0)
    await table.finish(lease, DEAD, reason="source snapshot not found", now=T0 + 1)
    item = await table.get("job-1")
    assert (item["state"], item["reason"]) == (DEAD, "source snapshot not found")
    assert "owner" not in item
    await table.requeue("job-1", now=T0 + 2)
    item = await table.get("job-1")
    assert item["state"] == QUEUED and "reason" not in item
    again = await table.claim("job-1", "host-b", LEASE, now=T0 + 3)
    assert again.attempt == 2


async def test_a_done_job_is_not_marked_dead(table: JobTable) -> None:
    await table.put_new("job-1", "{}", now=T0)
    lease = await table.claim("job-1", "host-a", LEASE, now=T0)
    await table.finish(lease, DONE, now=T0 + 1)
    assert await table.mark_dead("job-1", "redelivered too often") is False
    assert await table.mark_dead("no-such-job", "malformed") is False
    assert (await table.get("job-1"))["state"] == DONE
