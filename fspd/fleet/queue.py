"""The fleet's SQS queue: one message per job run, naming the job (its spec is in the table).

A host receives only as many messages as it has free slots, long-polling; the message stays
invisible to other hosts while its heartbeat extends the visibility, and is deleted when the
job ends. A message received ``max_receive_count`` times goes to the dead-letter queue by the
queue's redrive policy; a malformed one is moved there at once (never retried in a loop).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fspd.aws import call
from fspd.config import FleetSettings
from fspd.errors import BadInput
from fspd.fleet.setup import queue_url

MAX_BATCH = 10  # SQS's limit per ReceiveMessage
MAX_VISIBILITY_S = 43_200  # SQS's limit


@dataclass(frozen=True)
class Delivery:
    """One received message: its job, or why it is not a job message."""

    receipt: str
    receive_count: int
    body: str
    job_id: str | None
    problem: str | None = None


def message_body(job_id: str) -> str:
    return json.dumps({"v": 1, "job": job_id})


def parse_body(body: str) -> tuple[str | None, str | None]:
    """(job id, None) or (None, what is wrong with the message)."""
    try:
        data = json.loads(body)
    except ValueError:
        return None, "the message is not JSON"
    if not isinstance(data, dict) or data.get("v") != 1:
        return None, "the message is not a version 1 fspd job message"
    job = data.get("job")
    if not isinstance(job, str) or not 1 <= len(job) <= 255:
        return None, "the message names no job"
    return job, None


class JobQueue:
    def __init__(self, sqs: Any, fleet: FleetSettings) -> None:
        self.sqs, self.fleet = sqs, fleet
        self._urls: dict[str, str] = {}

    async def url(self, name: str) -> str:
        if name not in self._urls:
            found = await queue_url(self.sqs, name)
            if found is None:
                raise BadInput(f"SQS queue {name} does not exist (run `fspd fleet init`)",
                               field="fleet.queue")
            self._urls[name] = found
        return self._urls[name]

    async def send(self, job_id: str) -> str:
        result = await call(self.sqs, "SendMessage", QueueUrl=await self.url(self.fleet.queue),
                            MessageBody=message_body(job_id))
        return str(result["MessageId"])

    async def receive(self, free_slots: int) -> list[Delivery]:
        """Up to ``free_slots`` messages (long-polling ``receive_wait_s``); none asked for,
        and no request made, without a free slot."""
        if free_slots <= 0:
            return []
        result = await call(
            self.sqs, "ReceiveMessage", QueueUrl=await self.url(self.fleet.queue),
            MaxNumberOfMessages=min(free_slots, MAX_BATCH),
            WaitTimeSeconds=self.fleet.receive_wait_s,
            VisibilityTimeout=min(int(self.fleet.lease_s), MAX_VISIBILITY_S),
            MessageSystemAttributeNames=["ApproximateReceiveCount"])
        out = []
        for message in result.get("Messages", []):
            job, problem = parse_body(message.get("Body", ""))
            count = int(message.get("Attributes", {}).get("ApproximateReceiveCount", 1))
            out.append(Delivery(message["ReceiptHandle"], count, message.get("Body", ""),
                                job, problem))
        return out

    async def extend(self, delivery: Delivery, seconds: float) -> None:
        """Heartbeat: keep the message invisible for ``seconds`` more."""
        await call(self.sqs, "ChangeMessageVisibility", QueueUrl=await self.url(self.fleet.queue),
                   ReceiptHandle=delivery.receipt,
                   VisibilityTimeout=min(int(seconds), MAX_VISIBILITY_S))

    async def delete(self, delivery: Delivery) -> None:
        await call(self.sqs, "DeleteMessage", QueueUrl=await self.url(self.fleet.queue),
                   ReceiptHandle=delivery.receipt)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move a message to the DLQ now, with why (a malformed message is never retried)."""
        await call(self.sqs, "SendMessage", QueueUrl=await self.url(self.fleet.dlq_name),
                   MessageBody=delivery.body, MessageAttributes={
                       "fspd-reason": {"DataType": "String", "StringValue": reason[:1024]}})
        await self.delete(delivery)
