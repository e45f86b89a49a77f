"""The fleet's queue (SQS on moto: slots, visibility heartbeat, delete, redrive to the DLQ) and
its checkpoints in S3 (fenced by the attempt: a superseded host cannot replace the journal)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fspd.aws import call
from fspd.checkpoint import Checkpoint
from fspd.fleet.checkpoints import CheckpointStore
from fspd.fleet.queue import JobQueue
from fspd.fleet.services import Services
from fspd.fleet.table import FencedOut, JobTable

T0 = 1_800_000_000.0


@pytest.fixture
def queue(services: Services) -> JobQueue:
    return JobQueue(services.sqs, services.fleet.model_copy(update={"receive_wait_s": 0}))


async def _dlq_bodies(queue: JobQueue) -> list[tuple[str, dict[str, object]]]:
    result = await call(queue.sqs, "ReceiveMessage",
                        QueueUrl=await queue.url(queue.fleet.dlq_name), MaxNumberOfMessages=10,
                        MessageAttributeNames=["All"], WaitTimeSeconds=0)
    return [(m["Body"], m.get("MessageAttributes", {})) for m in result.get("Messages", [])]


async def test_no_free_slot_receives_nothing_and_a_slot_receives_one(queue: JobQueue) -> None:
    await queue.send("job-1")
    await queue.send("job-2")
    assert await queue.receive(0) == []
    [first] = await queue.receive(1)
    assert first.job_id in ("job-1", "job-2") and first.receive_count == 1
    [second] = await queue.receive(5)  # the first stays invisible while its lease runs
    assert {first.job_id, second.job_id} == {"job-1", "job-2"}
    await queue.delete(first)
    await queue.delete(second)
    assert await queue.receive(5) == []


async def test_a_heartbeat_keeps_a_message_and_letting_it_lapse_redelivers_it(
        queue: JobQueue) -> None:
    await queue.send("job-1")
    [taken] = await queue.receive(1)
    await queue.extend(taken, 600)  # heartbeat
    assert await queue.receive(1) == []
    await queue.extend(taken, 0)  # its host died: the visibility lapses now
    [again] = await queue.receive(1)
    assert again.job_id == "job-1" and again.receive_count == 2


async def test_a_job_received_max_receive_count_times_goes_to_the_dlq(queue: JobQueue) -> None:
    await queue.send("job-1")
    for count in range(1, queue.fleet.max_receive_count + 1):
        [taken] = await queue.receive(1)
        assert taken.receive_count == count
        await queue.extend(taken, 0)  # the attempt failed: give it back
    assert await queue.receive(1) == []
    assert [body for body, _ in await _dlq_bodies(queue)] == ['{"v": 1, "job": "job-1"}']


async def test_a_malformed_message_goes_to_the_dlq_with_its_reason(queue: JobQueue) -> None:
    await call(queue.sqs, "SendMessage", QueueUrl=await queue.url(queue.fleet.queue),
               MessageBody="not a job")
    [taken] = await queue.receive(1)
    assert taken.job_id is None and taken.problem == "the message is not JSON"
    await queue.dead_letter(taken, taken.problem)
    [(body, attrs)] = await _dlq_bodies(queue)
    assert body == "not a job"
    assert attrs["fspd-reason"]["StringValue"] == "the message is not JSON"
    assert await queue.receive(1) == []


async def test_a_superseded_attempt_cannot_replace_the_checkpoint(
        services: Services, tmp_path: Path) -> None:
    table = JobTable(services.dynamodb, services.fleet.table)
    store = CheckpointStore(services.s3, services.fleet, table)
    await table.put_new("job-1", "{}", now=T0)
    old = await table.claim("job-1", "host-a", 60, now=T0)
    journal = Checkpoint(tmp_path / "a", "job-1", "digest",
                         {"d0": {"type": "s3", "url": "s3://x/y", "header": {}}})
    await store.save(old, journal.body())
    new = await table.claim("job-1", "host-b", 60, now=T0 + 61)
    assert await store.load("job-1") == journal.body()  # the new attempt resumes from it

    first = journal.body()
    journal.sinks["d0"]["url"] = "s3://x/stale"
    with pytest.raises(FencedOut, match="attempt 1 on host-a was superseded"):
        await store.save(old, journal.body())
    listed = await call(services.s3, "ListObjectsV2", Bucket=store.bucket,
                        Prefix=f"{store.prefix}job-1/")
    assert [o["Key"] for o in listed["Contents"]] == [store.key("job-1", 1)]
    stored = await call(services.s3, "GetObject", Bucket=store.bucket, Key=store.key("job-1", 1))
    async with stored["Body"] as stream:
        assert await stream.read() == first  # the fenced save stored nothing

    journal.sinks["d0"]["url"] = "s3://x/new"
    key = await store.save(new, journal.body(), {"snap-1.digests": b"\x01" * 64})
    head = await call(services.s3, "HeadObject", Bucket=store.bucket, Key=key)
    assert head["Metadata"] == {"fspd-attempt": "2", "fspd-owner": "host-b"}
    assert await store.restore("job-1", tmp_path / "b") is True
    resumed = Checkpoint.open(tmp_path / "b", "job-1", "digest")
    assert resumed.resumed and resumed.sinks["d0"]["url"] == "s3://x/new"
    assert (tmp_path / "b" / "snap-1.digests").read_bytes() == b"\x01" * 64
