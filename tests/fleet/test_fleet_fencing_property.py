"""A property of the job table, against DynamoDB's real conditions on moto: for any
interleaving of claim / heartbeat / lease expiry / take-over / progress / give-back / complete
by several hosts, a write succeeds exactly when its host holds the current attempt under a
live lease (claims: exactly when nobody does), and at most one attempt ever completes a job."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fspd.config import Settings
from fspd.fleet.services import open_services
from fspd.fleet.table import DONE, QUEUED, FencedOut, JobTable, Lease, NotClaimable
from tests.fleet.conftest import fleet_settings

LEASE = 60.0
HOSTS = 3
OPS = ("claim", "heartbeat", "expire", "wait", "progress", "give_back", "complete")
WEIGHTED = ("claim", "claim", "expire", "expire", *OPS)  # take-overs are the interesting part
_job_ids = itertools.count()


@dataclass
class Model:
    """What DynamoDB's conditions should decide, computed independently of them."""

    now: float = 1_800_000_000.0
    state: str = QUEUED
    attempt: int = 0
    owner: str | None = None
    until: float = 0.0
    leases: list[Lease] = field(default_factory=list)  # every lease granted, stale ones too
    completions: int = 0

    def claimable(self) -> bool:
        return self.state in ("queued", "running") and (self.owner is None
                                                         or self.until < self.now)

    def current(self, lease: Lease) -> bool:
        return self.owner == lease.owner and lease.attempt == self.attempt


async def _scenario(ops: list[tuple[str, int]]) -> None:
    async with open_services(Settings(), fleet_settings()) as svc:
        table = JobTable(svc.dynamodb, svc.fleet.table)
        job = f"job-{next(_job_ids)}"
        await table.put_new(job, "{}")
        m = Model()
        for op, n in ops:
            host = f"host-{n % HOSTS}"
            if op == "expire":
                m.now += LEASE + 1
                continue
            if op == "wait":
                m.now += LEASE / 4
                continue
            if op == "claim":
                expected = m.claimable()
                try:
                    lease = await table.claim(job, host, LEASE, now=m.now)
                except NotClaimable:
                    assert not expected, f"{host} was refused a claimable job"
                    continue
                assert expected, f"{host} claimed a job held by {m.owner} under a live lease"
                assert lease.attempt == m.attempt + 1
                m.attempt, m.owner, m.until, m.state = lease.attempt, host, lease.until, "running"
                m.leases.append(lease)
                continue
            if not m.leases:
                continue  # nobody has held the job: nothing to write with
            index = n % len(m.leases)  # any lease ever granted, however stale
            lease = m.leases[index]
            host = lease.owner
            expected = m.current(lease)
            try:
                if op == "heartbeat":
                    m.leases[index] = await table.heartbeat(lease, LEASE, now=m.now)
                    m.until = m.leases[index].until
                elif op == "progress":
                    await table.record(lease, progress={"t": m.now}, now=m.now)
                elif op == "give_back":
                    await table.finish(lease, QUEUED, reason="retry", now=m.now)
                    m.state, m.owner = QUEUED, None
                else:
                    await table.finish(lease, DONE, now=m.now)
                    m.state, m.owner = DONE, None
                    m.completions += 1
            except FencedOut:
                assert not expected, f"{host}'s {op} with the current attempt was refused"
                continue
            assert expected, f"{host}'s {op} with attempt {lease.attempt} was accepted " \
                             f"(current: {m.attempt} by {m.owner})"
            assert m.completions <= 1
        item = await table.get(job)
        assert item is not None and item["attempt"] == m.attempt
        assert (item["state"] == DONE) == (m.completions == 1)


@pytest.mark.timeout(600)
@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(WEIGHTED), st.integers(0, 5)), min_size=1,
                max_size=30))
@example([("claim", 0), ("expire", 0), ("claim", 0), ("heartbeat", 0)])  # the same host,
# one attempt later: its old lease must be refused although the owner matches
def test_only_the_current_attempt_writes_and_at_most_one_completes(
        services_ready: None, ops: list[tuple[str, int]]) -> None:
    asyncio.run(_scenario(ops))


@pytest.fixture
def services_ready(fleet_endpoints: str) -> None:
    """The fleet's table, created once for the examples (each uses its own job)."""
    from fspd.fleet import setup
    from tests.fleet.conftest import make_bucket

    make_bucket(fleet_endpoints)

    async def create() -> None:
        async with open_services(Settings(), fleet_settings()) as svc:
            await setup.init(svc)

    asyncio.run(create())
