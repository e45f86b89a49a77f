"""``fspd fleet init``: create, or check, the fleet's queue, dead-letter queue (with the
redrive policy), job table and checkpoint prefix. Idempotent; with ``dry_run`` it only reads
and says what it would create."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fspd.aws import call
from fspd.errors import BadInput
from fspd.fleet.services import Services
from fspd.retry import ApiError

MARKER = "fleet.json"  # written under the checkpoint prefix: whose prefix it is


@dataclass(frozen=True)
class Step:
    resource: str  # "queue", "dlq", "redrive", "table", "prefix"
    name: str
    action: str  # "exists", "create", "created", "update", "updated"

    def line(self) -> str:
        verb = {"create": "would create", "update": "would set"}.get(self.action, self.action)
        return f"{self.resource:8} {self.name}: {verb}"


async def queue_url(sqs: Any, name: str) -> str | None:
    try:
        return str((await call(sqs, "GetQueueUrl", QueueName=name))["QueueUrl"])
    except ApiError as exc:
        if "NonExistentQueue" in exc.code or "QueueDoesNotExist" in exc.code:
            return None
        raise


async def _queue(svc: Services, resource: str, name: str, dry_run: bool) -> tuple[Step, str]:
    url = await queue_url(svc.sqs, name)
    if url is not None:
        return Step(resource, name, "exists"), url
    if dry_run:
        return Step(resource, name, "create"), ""
    attrs = {"VisibilityTimeout": str(int(svc.fleet.lease_s)),
             "ReceiveMessageWaitTimeSeconds": str(svc.fleet.receive_wait_s)}
    if resource == "dlq":
        attrs = {"MessageRetentionPeriod": str(14 * 86400)}  # SQS's longest: time to look
    url = (await call(svc.sqs, "CreateQueue", QueueName=name, Attributes=attrs))["QueueUrl"]
    return Step(resource, name, "created"), str(url)


async def _redrive(svc: Services, url: str, dlq_url: str, dry_run: bool) -> Step:
    fleet = svc.fleet
    want = {"maxReceiveCount": fleet.max_receive_count}
    name = f"{fleet.queue} -> {fleet.dlq_name} after {fleet.max_receive_count} receives"
    current: dict[str, Any] = {}
    if url and dlq_url:
        attrs = (await call(svc.sqs, "GetQueueAttributes", QueueUrl=url,
                            AttributeNames=["RedrivePolicy"])).get("Attributes", {})
        dlq_arn = (await call(svc.sqs, "GetQueueAttributes", QueueUrl=dlq_url,
                              AttributeNames=["QueueArn"]))["Attributes"]["QueueArn"]
        current = json.loads(attrs.get("RedrivePolicy", "{}"))
        want["deadLetterTargetArn"] = dlq_arn
        if (current.get("deadLetterTargetArn") == dlq_arn
                and int(current.get("maxReceiveCount", 0)) == fleet.max_receive_count):
            return Step("redrive", name, "exists")
    if dry_run:
        return Step("redrive", name, "update")
    await call(svc.sqs, "SetQueueAttributes", QueueUrl=url,
               Attributes={"RedrivePolicy": json.dumps(want)})
    return Step("redrive", name, "updated")


async def _table(svc: Services, dry_run: bool) -> Step:
    name = svc.fleet.table
    try:
        found = (await call(svc.dynamodb, "DescribeTable", TableName=name))["Table"]
    except ApiError as exc:
        if exc.code != "ResourceNotFoundException":
            raise
    else:
        key = found.get("KeySchema", [])
        if key != [{"AttributeName": "job", "KeyType": "HASH"}]:
            raise BadInput(f"table {name} exists with another key ({key}); fspd's job table "
                           "has the string hash key 'job'", field="--table")
        return Step("table", name, "exists")
    if dry_run:
        return Step("table", name, "create")
    await call(svc.dynamodb, "CreateTable", TableName=name, BillingMode="PAY_PER_REQUEST",
               AttributeDefinitions=[{"AttributeName": "job", "AttributeType": "S"}],
               KeySchema=[{"AttributeName": "job", "KeyType": "HASH"}])
    waiter = svc.dynamodb.get_waiter("table_exists")
    await waiter.wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    return Step("table", name, "created")


async def _prefix(svc: Services, dry_run: bool) -> Step:
    fleet = svc.fleet
    bucket, key = fleet.checkpoint_bucket, fleet.checkpoint_prefix + MARKER
    where = f"s3://{bucket}/{fleet.checkpoint_prefix}"
    try:
        await call(svc.s3, "HeadBucket", Bucket=bucket)
    except ApiError as exc:
        if exc.status == 404 or exc.code in ("404", "NoSuchBucket"):
            raise BadInput(f"bucket {bucket} does not exist (create it with your bucket "
                           "policy, encryption and lifecycle first)", field="--bucket") from None
        raise
    try:
        await call(svc.s3, "HeadObject", Bucket=bucket, Key=key)
        return Step("prefix", where, "exists")
    except ApiError as exc:
        if exc.status != 404 and exc.code not in ("404", "NoSuchKey"):
            raise
    if dry_run:
        return Step("prefix", where, "create")
    body = json.dumps({"queue": fleet.queue, "dlq": fleet.dlq_name, "table": fleet.table},
                      sort_keys=True).encode()
    await call(svc.s3, "PutObject", Bucket=bucket, Key=key, Body=body,
               ContentType="application/json")
    return Step("prefix", where, "created")


async def init(svc: Services, *, dry_run: bool = False) -> list[Step]:
    """Create what is missing (nothing with ``dry_run``); the steps, in order."""
    fleet = svc.fleet
    dlq, dlq_url = await _queue(svc, "dlq", fleet.dlq_name, dry_run)
    queue, url = await _queue(svc, "queue", fleet.queue, dry_run)
    return [queue, dlq, await _redrive(svc, url, dlq_url, dry_run), await _table(svc, dry_run),
            await _prefix(svc, dry_run)]
