"""`fspd serve` with a [fleet] section takes jobs from the fleet's queue (a real daemon, the
emulator for EBS, moto for SQS, DynamoDB and S3), and records their outcome in the table."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fspd.emulator.control import EmulatorControl
from tests.cli.conftest import Runner
from tests.daemon import conftest as daemon_fixtures
from tests.daemon.conftest import Daemon, upload_job, wait_for, write_config
from tests.fleet.conftest import BUCKET, make_bucket

make_daemon = daemon_fixtures.make_daemon  # a real `fspd serve` per test

SERVE_FLEET = f"""
[fleet]
queue = "fspd-jobs"
table = "fspd-jobs"
bucket = "s3://{BUCKET}/fleet"
lease_s = 10.0
heartbeat_s = 1.0
max_receive_count = 3
receive_wait_s = 1
"""


def _fleet_item(fleet_cli: Runner, job: str) -> dict[str, Any]:
    listed = json.loads(fleet_cli("fspd status --fleet --json").stdout)["jobs"]
    return next((j for j in listed if j["job"] == job), {})


def test_serve_runs_a_fleet_job_once_and_records_it_done(
        make_daemon: Callable[..., Daemon], emulator: EmulatorControl, fleet_cli: Runner,
        fleet_endpoints: str, tmp_path: Path) -> None:
    make_bucket(fleet_endpoints)
    assert fleet_cli("fspd fleet init").returncode == 0
    image = tmp_path / "in.img"
    image.write_bytes(os.urandom(3 << 20) + bytes(1 << 20) + os.urandom(12345))
    (tmp_path / "up.toml").write_text(f'name = "fleet-up"\n{upload_job(emulator, image)}')
    assert fleet_cli("fspd submit --fleet up.toml").returncode == 0

    config = write_config(tmp_path / "serve.toml", SERVE_FLEET)
    d = make_daemon("--config", str(config), root=tmp_path / "host-a")
    item = wait_for(lambda: _fleet_item(fleet_cli, "fleet-up").get("state") == "done"
                    and _fleet_item(fleet_cli, "fleet-up"), 120, "the fleet job to finish")
    assert item["attempt"] == 1 and "owner" not in item, item
    record = d.api("/v1/jobs/fleet-up")
    assert record["state"] == "completed", record
    [snap] = record["snapshot_ids"].values()
    assert emulator.image(snap, length=image.stat().st_size) == image.read_bytes()
    assert [(s["id"], s["status"]) for s in emulator.snapshots()] == [(snap, "completed")]
    assert '"fleet_job_finished"' in d.log()
