"""`fspd fleet init`, `fspd submit --fleet`, `fspd fleet retry` and `fspd status --fleet`, run
as typed (the console script) against moto's SQS, DynamoDB and S3, checked by their effect."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fspd.aws import call
from fspd.config import Settings
from fspd.fleet.queue import JobQueue
from fspd.fleet.services import Services, open_services
from fspd.fleet.table import DEAD, QUEUED, JobTable
from tests.cli.conftest import Runner
from tests.fleet.conftest import BUCKET, fleet_settings, make_bucket

JOB = """name = "{name}"
[source]
type = "ebs"
snapshot_id = "snap-0123456789abcdef0"
region = "us-east-1"
[[destinations]]
type = "file"
path = "/tmp/fleet-{name}.img"
"""


@pytest.fixture
async def aws(fleet_endpoints: str) -> AsyncIterator[Services]:
    """Clients to look at what the commands did (nothing created here but the bucket)."""
    make_bucket(fleet_endpoints)
    async with open_services(Settings(), fleet_settings(receive_wait_s=0)) as svc:
        yield svc


async def _resources(svc: Services) -> dict[str, Any]:
    queues = (await call(svc.sqs, "ListQueues")).get("QueueUrls", [])
    tables = (await call(svc.dynamodb, "ListTables"))["TableNames"]
    objects = (await call(svc.s3, "ListObjectsV2", Bucket=BUCKET)).get("Contents", [])
    return {"queues": sorted(q.rsplit("/", 1)[-1] for q in queues), "tables": tables,
            "objects": [o["Key"] for o in objects]}


async def test_fleet_init_dry_run_says_what_it_would_create_and_creates_nothing(
        fleet_cli: Runner, aws: Services) -> None:
    result = fleet_cli("fspd fleet init --dry-run")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("dry run: nothing is created\n")
    for line in ("queue    fspd-jobs: would create", "dlq      fspd-jobs-dlq: would create",
                 "redrive  fspd-jobs -> fspd-jobs-dlq after 3 receives: would set",
                 "table    fspd-jobs: would create",
                 f"prefix   s3://{BUCKET}/fleet/: would create"):
        assert line in out, out
    assert await _resources(aws) == {"queues": [], "tables": [], "objects": []}


async def test_fleet_init_creates_the_queues_redrive_table_and_prefix_once(
        fleet_cli: Runner, aws: Services) -> None:
    first = fleet_cli("fspd fleet init --json")
    assert first.returncode == 0, first.stderr
    actions = {s["resource"]: s["action"] for s in json.loads(first.stdout)["steps"]}
    assert actions == {"queue": "created", "dlq": "created", "redrive": "updated",
                       "table": "created", "prefix": "created"}
    assert await _resources(aws) == {"queues": ["fspd-jobs", "fspd-jobs-dlq"],
                                     "tables": ["fspd-jobs"], "objects": ["fleet/fleet.json"]}
    queue = JobQueue(aws.sqs, aws.fleet)
    attrs = (await call(aws.sqs, "GetQueueAttributes", QueueUrl=await queue.url("fspd-jobs"),
                        AttributeNames=["RedrivePolicy"]))["Attributes"]
    policy = json.loads(attrs["RedrivePolicy"])
    assert int(policy["maxReceiveCount"]) == 3
    assert policy["deadLetterTargetArn"].endswith(":fspd-jobs-dlq")

    again = fleet_cli("fspd fleet init")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count(": exists") == 5, again.stdout
    changed = fleet_cli("fspd fleet init --max-receive-count 7 --dry-run")
    assert "after 7 receives: would set" in changed.stdout, changed.stdout


@pytest.mark.parametrize(("argv", "field"), [
    ("fspd fleet init --bucket my-bucket", "--bucket: 'my-bucket' is not s3://BUCKET"),
    ("fspd fleet init --queue 'a b'", "--queue: String should match pattern"),
    ("fspd fleet init --bucket s3://no-such-bucket/x", "--bucket: bucket no-such-bucket does "
     "not exist"),
])
def test_fleet_init_refuses_bad_input_naming_the_flag(fleet_cli: Runner, fleet_endpoints: str,
                                                      argv: str, field: str) -> None:
    result = fleet_cli(argv)
    assert result.returncode == 2, result.stderr
    assert f"fspd: {field}" in result.stderr


def test_without_a_fleet_section_the_fleet_commands_say_so(fleet_cli: Runner,
                                                           tmp_path: Path) -> None:
    config = tmp_path / "plain.toml"
    config.write_text("")
    env = {"FSPD_CONFIG": str(config)}
    for argv in ("fspd fleet init", "fspd fleet retry job-1", "fspd status --fleet"):
        result = fleet_cli(argv, extra_env=env)
        assert result.returncode == 2, (argv, result.stderr)
        assert "fspd: fleet: no [fleet] section" in result.stderr
    missing = fleet_cli("fspd fleet init --queue q --table tab", extra_env=env)
    assert missing.returncode == 2 and "fspd: --bucket: Field required" in missing.stderr


async def test_submit_fleet_writes_the_item_then_the_message(
        fleet_cli: Runner, aws: Services, tmp_path: Path) -> None:
    assert fleet_cli("fspd fleet init").returncode == 0
    (tmp_path / "one.toml").write_text(JOB.format(name="job-one"))
    result = fleet_cli("fspd submit --fleet one.toml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "job-one"
    item = await JobTable(aws.dynamodb, "fspd-jobs").get("job-one")
    assert item is not None
    assert (item["state"], item["attempt"], item["filename"]) == (QUEUED, 0, "one.toml")
    assert item["spec"] == JOB.format(name="job-one")
    [delivery] = await JobQueue(aws.sqs, aws.fleet).receive(10)
    assert delivery.job_id == "job-one"

    again = fleet_cli("fspd submit --fleet one.toml")
    assert again.returncode == 2
    assert "job job-one is already in the fleet's table fspd-jobs" in again.stderr
    assert await JobQueue(aws.sqs, aws.fleet).receive(10) == []  # no second message


async def test_submit_fleet_refuses_a_bad_job_naming_the_field_and_enqueues_nothing(
        fleet_cli: Runner, aws: Services, tmp_path: Path) -> None:
    assert fleet_cli("fspd fleet init").returncode == 0
    (tmp_path / "bad.toml").write_text(JOB.format(name="bad").replace(
        'snapshot_id = "snap-0123456789abcdef0"', 'snapshot_id = "vol-1"'))
    result = fleet_cli("fspd submit --fleet bad.toml")
    assert result.returncode == 2
    assert "source.snapshot_id" in result.stderr, result.stderr
    assert await JobTable(aws.dynamodb, "fspd-jobs").scan() == []
    assert await JobQueue(aws.sqs, aws.fleet).receive(10) == []


async def test_fleet_retry_queues_a_dead_job_again_and_refuses_others(
        fleet_cli: Runner, aws: Services, tmp_path: Path) -> None:
    assert fleet_cli("fspd fleet init").returncode == 0
    (tmp_path / "one.toml").write_text(JOB.format(name="job-one"))
    assert fleet_cli("fspd submit --fleet one.toml").returncode == 0
    table, queue = JobTable(aws.dynamodb, "fspd-jobs"), JobQueue(aws.sqs, aws.fleet)
    [delivery] = await queue.receive(1)
    lease = await table.claim("job-one", "host-a", 60)
    await table.finish(lease, DEAD, reason="failed 3 times: source snapshot not found")
    await queue.delete(delivery)

    status = fleet_cli("fspd status --fleet")
    assert status.returncode == 0, status.stderr
    [row] = [line for line in status.stdout.splitlines() if line.startswith("job-one")]
    assert row.split()[:4] == ["job-one", "dead", "-", "1"]
    assert row.endswith("failed 3 times: source snapshot not found")

    result = fleet_cli("fspd fleet retry job-one")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "job-one: queued again"
    item = await table.get("job-one")
    assert item is not None and item["state"] == QUEUED and "reason" not in item
    [delivery] = await queue.receive(1)
    assert delivery.job_id == "job-one"
    await table.claim("job-one", "host-b", 60)
    for job, why in (("job-one", "cannot retry job-one: it is running"),
                     ("job-nope", "cannot retry job-nope: no such job")):
        refused = fleet_cli(f"fspd fleet retry {job}")
        assert refused.returncode == 2 and f"fspd: job: {why}" in refused.stderr


async def test_status_fleet_lists_every_job_with_state_owner_attempts_and_progress(
        fleet_cli: Runner, aws: Services, tmp_path: Path) -> None:
    assert fleet_cli("fspd fleet init").returncode == 0
    for name in ("job-a", "job-b"):
        (tmp_path / f"{name}.toml").write_text(JOB.format(name=name))
        assert fleet_cli(f"fspd submit --fleet {name}.toml").returncode == 0
    table = JobTable(aws.dynamodb, "fspd-jobs")
    lease = await table.claim("job-a", "host-1", 600)
    await table.heartbeat(lease, 600, progress={"bytes_done": 1 << 30, "percent": 25.0,
                                                "eta_s": 30.0, "rate_recent_bps": 100 << 20})

    listed = json.loads(fleet_cli("fspd status --fleet --json").stdout)
    jobs = {j["job"]: j for j in listed["jobs"]}
    assert (jobs["job-a"]["state"], jobs["job-a"]["owner"], jobs["job-a"]["attempt"]) == (
        "running", "host-1", 1)
    assert jobs["job-a"]["progress"] == {"bytes_done": 1 << 30, "percent": 25.0,
                                         "eta_s": 30.0, "rate_recent_bps": 100 << 20}
    assert (jobs["job-b"]["state"], jobs["job-b"]["attempt"]) == ("queued", 0)
    text = fleet_cli("fspd status --fleet").stdout.splitlines()
    assert text[0].split() == ["JOB", "STATE", "OWNER", "ATTEMPTS", "PROGRESS", "RATE", "ETA",
                               "LEASE", "REASON"]
    assert text[1].split()[:7] == ["job-a", "running", "host-1", "1", "25%", "100.0", "MiB/s"]
    assert text[1].split()[7] == "30s"
    assert text[2].split()[:7] == ["job-b", "queued", "-", "0", "-", "-", "-"]


@pytest.mark.parametrize("argv", [["fleet", "--help"], ["fleet", "init", "--help"]])
def test_fleet_help_loads_no_heavy_module(argv: list[str], fleet_cli_env: dict[str, str],
                                          tmp_path: Path) -> None:
    from tests.cli.test_cli_startup_imports import _heavy, _run

    probe = _run(argv, fleet_cli_env, tmp_path)
    assert probe["code"] == 0 and "fleet" in probe["stdout"], probe["stderr"]
    assert _heavy(probe["modules"]) == []


async def test_status_fleet_of_one_job_and_of_an_unknown_one(
        fleet_cli: Runner, aws: Services, tmp_path: Path) -> None:
    assert fleet_cli("fspd fleet init").returncode == 0
    for name in ("job-a", "other"):
        (tmp_path / f"{name}.toml").write_text(JOB.format(name=name))
        assert fleet_cli(f"fspd submit --fleet {name}.toml").returncode == 0
    one = json.loads(fleet_cli("fspd status --fleet job --json").stdout)
    assert [j["job"] for j in one["jobs"]] == ["job-a"]
    unknown = fleet_cli("fspd status --fleet nope")
    assert unknown.returncode == 2 and "fspd: job: no fleet job 'nope'" in unknown.stderr


def test_submit_fleet_with_wait_is_refused_naming_the_flag(fleet_cli: Runner,
                                                          tmp_path: Path) -> None:
    (tmp_path / "one.toml").write_text(JOB.format(name="job-one"))
    result = fleet_cli("fspd submit --fleet --wait one.toml")
    assert result.returncode == 2 and "fspd: --wait: --wait is for the local daemon" in (
        result.stderr)


def test_fleet_commands_without_credentials_exit_3(fleet_cli: Runner, tmp_path: Path) -> None:
    env = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "",
           "AWS_EC2_METADATA_DISABLED": "true"}
    result = fleet_cli("fspd status --fleet", extra_env=env)
    assert result.returncode == 3, result.stderr
    assert "Unable to locate credentials" in result.stderr
