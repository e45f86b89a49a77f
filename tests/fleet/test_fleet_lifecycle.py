"""One fleet job on a host (fspd/fleet/lifecycle.py) against moto's SQS, DynamoDB and S3: a
duplicate delivery runs the job once, a job that always fails lands in the DLQ with its
reason, a malformed message goes to the DLQ, and a host whose job was taken over is cancelled
by its heartbeat and its writes refused. The job itself is a coroutine here; `fspd serve`
gives it a worker process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from fspd.aws import call
from fspd.errors import TransferFailed
from fspd.fleet.checkpoints import CheckpointStore
from fspd.fleet.lifecycle import FENCED, Fleet
from fspd.fleet.queue import JobQueue
from fspd.fleet.services import Services
from fspd.fleet.table import DEAD, DONE, FencedOut, JobTable, Lease

LEASE, BEAT = 10.0, 1.0


def _host(svc: Services, name: str, clock: Callable[[], float] = time.time) -> Fleet:
    fleet = svc.fleet.model_copy(update={"lease_s": LEASE, "heartbeat_s": BEAT,
                                         "receive_wait_s": 0})
    table = JobTable(svc.dynamodb, fleet.table)
    return Fleet(fleet, table, JobQueue(svc.sqs, fleet), CheckpointStore(svc.s3, fleet, table),
                 name, clock)


async def _submit(host: Fleet, job: str) -> None:
    await host.table.put_new(job, '{"v": 1}')
    await host.queue.send(job)


async def _dlq(host: Fleet) -> list[tuple[str, str]]:
    result = await call(host.queue.sqs, "ReceiveMessage",
                        QueueUrl=await host.queue.url(host.fleet.dlq_name),
                        MaxNumberOfMessages=10, MessageAttributeNames=["All"])
    return [(m["Body"], m["MessageAttributes"]["fspd-reason"]["StringValue"])
            for m in result.get("Messages", [])]


async def test_a_duplicate_delivery_runs_the_job_once(services: Services) -> None:
    a, b = _host(services, "host-a"), _host(services, "host-b")
    await _submit(a, "job-1")
    await a.queue.send("job-1")  # delivered twice
    first, second = await a.queue.receive(1), await b.queue.receive(1)
    taken_a = await a.take(first[0])
    assert taken_a is not None and taken_a.spec == '{"v": 1}'
    assert await b.take(second[0]) is None  # held by host-a: left alone

    runs: list[int] = []

    async def job(lease: Lease) -> None:
        runs.append(lease.attempt)

    assert await a.run(taken_a, job) == "done"
    await b.queue.extend(second[0], 0)  # the duplicate comes back after host-a finished
    [again] = await b.queue.receive(1)
    assert await b.take(again) is None  # done: deleted, not run
    assert runs == [1]
    assert await b.queue.receive(10) == []
    assert (await a.table.get("job-1"))["state"] == DONE


async def test_a_job_that_always_fails_lands_in_the_dlq_with_its_reason(
        services: Services) -> None:
    host = _host(services, "host-a")
    await _submit(host, "job-1")

    async def job(lease: Lease) -> None:
        raise TransferFailed("source snapshot snap-0 not found")

    outcomes = []
    for _ in range(host.fleet.max_receive_count):
        [delivery] = await host.queue.receive(1)
        taken = await host.take(delivery)
        assert taken is not None
        outcomes.append(await host.run(taken, job))
    assert outcomes == ["failed"] * host.fleet.max_receive_count
    assert await host.queue.receive(10) == []
    item = await host.table.get("job-1")
    reason = "delivery 3: source snapshot snap-0 not found"
    assert (item["state"], item["reason"], item["attempt"]) == (DEAD, reason, 3)
    assert await _dlq(host) == [('{"v": 1, "job": "job-1"}', reason)]


async def test_a_malformed_message_goes_to_the_dlq_not_into_a_loop(services: Services) -> None:
    host = _host(services, "host-a")
    for body in ("{oops", '{"v": 1, "job": "job-unknown"}'):
        await call(host.queue.sqs, "SendMessage", QueueUrl=await host.queue.url("fspd-jobs"),
                   MessageBody=body)
    for delivery in await host.queue.receive(10) + await host.queue.receive(10):
        assert await host.take(delivery) is None
    assert await host.queue.receive(10) == []
    assert sorted(await _dlq(host)) == [
        ('{"v": 1, "job": "job-unknown"}', "no job job-unknown in table fspd-jobs"),
        ("{oops", "the message is not JSON")]


async def test_a_host_whose_job_is_taken_over_is_cancelled_and_its_writes_refused(
        services: Services) -> None:
    a = _host(services, "host-a")
    await _submit(a, "job-1")
    [delivery] = await a.queue.receive(1)
    taken = await a.take(delivery)
    assert taken is not None
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def job(lease: Lease) -> None:
        started.set()
        try:
            await asyncio.Event().wait()  # a long job
        except asyncio.CancelledError:
            cancelled.set()
            raise

    journal = b'{"version": 1}'
    outcome = asyncio.create_task(a.run(taken, job, journal=lambda: (journal, {})))
    await asyncio.wait_for(started.wait(), 30)
    item = await a.table.get("job-1")
    while item.get("checkpoint_key") is None:  # the heartbeat saves the journal
        await asyncio.sleep(0.05)
        item = await a.table.get("job-1")
    # host-b's clock is past host-a's lease: host-a paused (SIGSTOP) as far as b can tell
    b = _host(services, "host-b", clock=lambda: time.time() + 2 * LEASE)
    new = await b.table.claim("job-1", "host-b", LEASE, now=b.clock())
    done, _ = await asyncio.wait({outcome}, timeout=30)  # (wait_for would cancel it)
    assert outcome in done and outcome.result() == FENCED
    assert cancelled.is_set()
    with pytest.raises(FencedOut):
        await a.store.save(taken.lease, b"stale")
    item = await a.table.get("job-1")
    assert (item["state"], item["owner"], item["attempt"]) == ("running", "host-b", 2)
    assert await a.store.load("job-1") == journal  # the new attempt resumes from it
    await b.table.finish(new, DONE, now=b.clock())


async def test_stopping_the_host_cancels_the_job_and_leaves_it_to_its_lease(
        services: Services) -> None:
    host = _host(services, "host-a")
    await _submit(host, "job-1")
    [delivery] = await host.queue.receive(1)
    taken = await host.take(delivery)
    assert taken is not None
    started = asyncio.Event()

    async def job(lease: Lease) -> None:
        started.set()
        await asyncio.Event().wait()

    outcome = asyncio.create_task(host.run(taken, job))
    await asyncio.wait_for(started.wait(), 30)
    outcome.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outcome
    item = await host.table.get("job-1")  # not settled: another host takes it after the lease
    assert (item["state"], item["owner"]) == ("running", "host-a")
