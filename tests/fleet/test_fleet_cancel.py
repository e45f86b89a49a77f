"""`fspd cancel JOB` on the host running a fleet job ends it in the fleet: its item says it
was cancelled and by whom, its message is gone (no host takes it again), and `fspd fleet
retry` queues it again, resuming the same pending snapshot from its checkpoint in S3."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import botocore.session

from fspd.emulator.control import EmulatorControl
from tests.cli.conftest import Runner
from tests.daemon import conftest as daemon_fixtures
from tests.daemon.conftest import Daemon, wait_for, write_config
from tests.fleet.test_fleet_serve import TAKEOVER, _fleet_item, submit_held_upload

make_daemon = daemon_fixtures.make_daemon  # a real `fspd serve` per test


def _messages_left(moto_url: str, queue: str) -> int:
    sqs = botocore.session.get_session().create_client(
        "sqs", region_name="us-east-1", endpoint_url=moto_url)
    url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return sum(int(v) for v in attrs.values())


def test_cancel_of_a_fleet_job_ends_it_in_the_table_and_retry_resumes_it(
        make_daemon: Callable[..., Daemon], emulator: EmulatorControl, fleet_cli: Runner,
        fleet_endpoints: str, tmp_path: Path) -> None:
    image = submit_held_upload(emulator, fleet_cli, fleet_endpoints, tmp_path)
    d = make_daemon("--config", str(write_config(tmp_path / "serve.toml", TAKEOVER)),
                    root=tmp_path / "host-a")
    wait_for(lambda: d.api("/v1/jobs/fleet-up", missing_ok=True) and _fleet_item(
        fleet_cli, "fleet-up").get("checkpoint_key"), 60, "the job to run and checkpoint")

    cancel = d.cli("cancel", "fleet-up")
    assert cancel.returncode == 0, cancel.stderr
    item = wait_for(lambda: (i := _fleet_item(fleet_cli, "fleet-up")).get("state") == "failed"
                    and i, 60, "the fleet's item to say the job ended")
    assert "cancelled: by" in item["reason"] and "owner" not in item, item
    assert _messages_left(fleet_endpoints, "fspd-jobs") == 0  # nobody takes it again
    assert _messages_left(fleet_endpoints, "fspd-jobs-dlq") == 0  # not a failure to inspect
    record = wait_for(lambda: (r := d.api("/v1/jobs/fleet-up"))["state"] == "cancelled" and r,
                      30, "the host to show it cancelled")
    assert "cancelled: by" in record["error"]["message"], record
    [pending] = [s["id"] for s in emulator.snapshots()]

    emulator.clear_faults()
    retried = fleet_cli("fspd fleet retry fleet-up")
    assert retried.returncode == 0, retried.stderr
    item = wait_for(lambda: (i := _fleet_item(fleet_cli, "fleet-up")).get("state") == "done"
                    and i, 120, "the retried job to finish")
    assert item["attempt"] == 2, item
    assert [(s["id"], s["status"]) for s in emulator.snapshots()] == [(pending, "completed")]
    assert emulator.image(pending, length=image.stat().st_size) == image.read_bytes()
    started = [line for line in d.log().splitlines() if '"job_started"' in line]
    assert started == [], started  # never run as a local spool job
