"""`fspd serve` with a [fleet] section takes jobs from the fleet's queue (a real daemon, the
emulator for EBS, moto for SQS, DynamoDB and S3), and records their outcome in the table."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fspd.emulator.control import EmulatorControl
from tests.checkpoints import _bits
from tests.cli.conftest import Runner
from tests.daemon import conftest as daemon_fixtures
from tests.daemon.conftest import Daemon, upload_job, wait_for, write_config
from tests.daemon.test_control_socket import _get
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
    metrics = asyncio.run(_get(d.socket, "/metrics"))[1]
    taken = [line for line in metrics.splitlines()
             if line.startswith("fspd_fleet_jobs_total{") and 'event="taken"' in line]
    done = [line for line in metrics.splitlines()
            if line.startswith("fspd_fleet_jobs_total{") and 'event="done"' in line]
    assert [line.rsplit(" ", 1)[1] for line in taken + done] == ["1", "1"], metrics


TAKEOVER = SERVE_FLEET.replace("max_receive_count = 3", "max_receive_count = 10") + """
[transfer]
put_concurrency = 2
checkpoint_interval_s = 0.1
"""


def _s3_journal(moto_url: str, item: dict[str, Any]) -> dict[str, Any]:
    """The job's current checkpoint in S3 (the journal of fspd/checkpoint.py)."""
    import botocore.session

    s3 = botocore.session.get_session().create_client(
        "s3", region_name="us-east-1", endpoint_url=moto_url)
    body = s3.get_object(Bucket=BUCKET, Key=item["checkpoint_key"])["Body"].read()
    return dict(json.loads(body))


def submit_held_upload(emulator: EmulatorControl, fleet_cli: Runner, moto_url: str,
                       tmp_path: Path) -> Path:
    """`fspd fleet init`, then an upload of 16 random blocks submitted to the fleet as job
    "fleet-up", with the emulator answering only its first 4 puts (the rest wait until the
    faults change): a host running it stops at a known point. The uploaded image."""
    make_bucket(moto_url)
    assert fleet_cli("fspd fleet init").returncode == 0
    image = tmp_path / "in.img"
    image.write_bytes(os.urandom(8 << 20))
    emulator.faults(hold_after=4, operations=["PutSnapshotBlock"])
    (tmp_path / "up.toml").write_text(f'name = "fleet-up"\n{upload_job(emulator, image)}')
    assert fleet_cli("fspd submit --fleet up.toml").returncode == 0
    return image


def test_after_kill_9_another_host_takes_over_and_finishes_the_same_snapshot(
        make_daemon: Callable[..., Daemon], emulator: EmulatorControl, fleet_cli: Runner,
        fleet_endpoints: str, tmp_path: Path) -> None:
    image = submit_held_upload(emulator, fleet_cli, fleet_endpoints, tmp_path)
    config = write_config(tmp_path / "serve.toml", TAKEOVER)
    a = make_daemon("--config", str(config), root=tmp_path / "host-a")

    def resumable_in_s3() -> tuple[str, int] | None:
        """(pending snapshot, blocks put) once host-a's journal in S3 claims some blocks."""
        item = _fleet_item(fleet_cli, "fleet-up")
        if not item.get("checkpoint_key"):
            return None
        [sink] = _s3_journal(fleet_endpoints, item)["sinks"].values()
        written = _bits(sink["written"]) if sink.get("written") else 0
        return (sink["snapshot_id"], written) if written >= 2 else None

    pending, durable = wait_for(resumable_in_s3, 60, "host-a's journal in S3 to claim blocks")
    assert a.proc is not None
    a.proc.kill()  # kill -9
    a.proc.wait()
    emulator.clear_faults()
    emulator.reset_stats()
    b = make_daemon("--config", str(config), root=tmp_path / "host-b")
    item = wait_for(lambda: _fleet_item(fleet_cli, "fleet-up").get("state") == "done"
                    and _fleet_item(fleet_cli, "fleet-up"), 120, "host-b to finish the job")
    assert item["attempt"] >= 2, item
    record = b.api("/v1/jobs/fleet-up")
    assert record["state"] == "completed" and record["restarted"], record
    assert list(record["snapshot_ids"].values()) == [pending]
    assert [(s["id"], s["status"]) for s in emulator.snapshots()] == [(pending, "completed")]
    assert emulator.image(pending, length=image.stat().st_size) == image.read_bytes()
    # host-b resumed from the S3 journal: the blocks it claims were not put again
    assert emulator.stats()["requests"].get("PutSnapshotBlock", 0) <= 16 - durable


def test_a_zombie_host_is_fenced_out_and_the_result_stays_correct(
        make_daemon: Callable[..., Daemon], emulator: EmulatorControl, fleet_cli: Runner,
        fleet_endpoints: str, tmp_path: Path) -> None:
    image = submit_held_upload(emulator, fleet_cli, fleet_endpoints, tmp_path)
    config = write_config(tmp_path / "serve.toml", TAKEOVER)
    a = make_daemon("--config", str(config), root=tmp_path / "host-a")
    wait_for(lambda: _fleet_item(fleet_cli, "fleet-up").get("owner"), 60, "host-a to claim")
    assert a.proc is not None
    zombie = [a.proc.pid, *(w["pid"] for w in a.api("/v1/status")["workers"])]
    for pid in zombie:  # SIGSTOP the whole host: daemon and workers
        os.kill(pid, signal.SIGSTOP)
    try:
        emulator.clear_faults()
        b = make_daemon("--config", str(config), root=tmp_path / "host-b")
        item = wait_for(lambda: _fleet_item(fleet_cli, "fleet-up").get("state") == "done"
                        and _fleet_item(fleet_cli, "fleet-up"), 120, "host-b to finish")
    finally:
        for pid in zombie:
            os.kill(pid, signal.SIGCONT)
    assert item["attempt"] == 2
    # the zombie's heartbeat (or its final write) is refused: it stops the job
    record = wait_for(lambda: a.api("/v1/jobs/fleet-up")["state"] in ("cancelled", "failed")
                      and a.api("/v1/jobs/fleet-up"), 60, "host-a to stop the job")
    assert record["state"] == "cancelled", record
    assert '"fleet_job_fenced"' in a.log()
    after = _fleet_item(fleet_cli, "fleet-up")
    assert (after["state"], after["attempt"], after.get("owner")) == ("done", 2, None)
    [snap] = b.api("/v1/jobs/fleet-up")["snapshot_ids"].values()
    assert [(s["id"], s["status"]) for s in emulator.snapshots()] == [(snap, "completed")]
    assert emulator.image(snap, length=image.stat().st_size) == image.read_bytes()


def test_serve_with_a_fleet_not_created_says_so_and_keeps_its_spool_working(
        make_daemon: Callable[..., Daemon], emulator: EmulatorControl, fleet_endpoints: str,
        tmp_path: Path) -> None:
    config = write_config(tmp_path / "serve.toml", SERVE_FLEET)  # no `fspd fleet init`
    d = make_daemon("--config", str(config), root=tmp_path / "host-a")
    wait_for(lambda: '"fleet_unavailable"' in d.log(), 60, "the daemon to log the fleet error")
    assert "SQS queue fspd-jobs does not exist (run `fspd fleet init`)" in d.log()
    image = tmp_path / "in.img"
    image.write_bytes(os.urandom(1 << 20))
    job = d.submit(upload_job(emulator, image), "up.toml")
    assert d.wait_finished(job, 60) == "done"
