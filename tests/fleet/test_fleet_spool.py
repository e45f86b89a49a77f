"""``[fleet] spool_dir``: a job file dropped into the fleet's spool directory of a real
``fspd serve`` is enqueued into the fleet (item, then message) and moved to done/ with the
fleet job id; a bad one goes to failed/ naming the field, a duplicate says so. Moto serves SQS,
DynamoDB and S3; the emulator EBS."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fspd.config import Settings
from fspd.daemon.spool import Spool
from fspd.emulator.control import EmulatorControl
from fspd.fleet.services import open_services
from fspd.fleet.table import JobTable
from tests.cli.conftest import Runner
from tests.daemon import conftest as daemon_fixtures
from tests.daemon.conftest import Daemon, upload_job, wait_for, write_config
from tests.fleet.conftest import fleet_settings, make_bucket
from tests.fleet.test_fleet_serve import SERVE_FLEET, _fleet_item

make_daemon = daemon_fixtures.make_daemon  # a real `fspd serve` per test


def _serve_config(tmp_path: Path, fleet_spool: Path) -> Path:
    return write_config(tmp_path / "serve.toml", SERVE_FLEET.replace(
        "receive_wait_s = 1\n", f'receive_wait_s = 1\nspool_dir = "{fleet_spool}"\n'))


def _landed(spool: Spool, name: str) -> tuple[str, dict[str, Any]] | None:
    """(box, sidecar record) once ``name`` is in done/ or failed/."""
    found = spool.sidecar(name)
    return found if found is not None and (spool.box(found[0]) / name).exists() else None


def _image(tmp_path: Path, size: int = 1 << 20) -> Path:
    image = tmp_path / "in.img"
    image.write_bytes(os.urandom(size))
    return image


def test_a_job_dropped_in_the_fleet_spool_is_enqueued_and_run_by_the_fleet(
        make_daemon: Callable[..., Daemon], emulator: EmulatorControl, fleet_cli: Runner,
        fleet_endpoints: str, tmp_path: Path) -> None:
    make_bucket(fleet_endpoints)
    assert fleet_cli("fspd fleet init").returncode == 0
    fleet_spool = Spool(tmp_path / "fleet-spool")
    fleet_spool.ensure()
    stale = fleet_spool.box("tmp") / "died-half-way.toml"  # a writer that died a day ago
    stale.write_text("verb = ")
    os.utime(stale, (1e9, 1e9))
    d = make_daemon("--config", str(_serve_config(tmp_path, fleet_spool.root)),
                    root=tmp_path / "host-a")
    image = _image(tmp_path, (2 << 20) + 4321)
    (tmp_path / "up.toml").write_text(f'name = "dropped-up"\n{upload_job(emulator, image)}')
    # the habit: `fspd submit --spool DIR` writes into tmp/ and renames into new/
    dropped = fleet_cli(["fspd", "submit", "--spool", str(fleet_spool.root), "up.toml"])
    assert dropped.returncode == 0, dropped.stderr
    name = dropped.stdout.strip()

    box, record = wait_for(lambda: _landed(fleet_spool, name), 60, "the file to be enqueued")
    assert box == "done" and record["state"] == "enqueued", record
    assert record["fleet_job"] == "dropped-up" and record["message_id"], record
    item = wait_for(lambda: _fleet_item(fleet_cli, "dropped-up").get("state") == "done"
                    and _fleet_item(fleet_cli, "dropped-up"), 120, "the fleet job to finish")
    assert (item["attempt"], item["filename"]) == (1, name), item
    [snap] = d.api("/v1/jobs/dropped-up")["snapshot_ids"].values()
    assert emulator.image(snap, length=image.stat().st_size) == image.read_bytes()
    assert fleet_spool.names("new") == [] and fleet_spool.names("active") == []
    assert not d.spool.names("done") and not d.spool.names("failed")  # not the local spool
    assert '"fleet_spool_enqueued"' in d.log()
    wait_for(lambda: not stale.exists(), 30, "the stale tmp/ file to be removed")


def test_a_bad_or_duplicate_job_file_goes_to_failed_naming_why(
        make_daemon: Callable[..., Daemon], emulator: EmulatorControl, fleet_cli: Runner,
        fleet_endpoints: str, tmp_path: Path) -> None:
    make_bucket(fleet_endpoints)
    assert fleet_cli("fspd fleet init").returncode == 0
    fleet_spool = Spool(tmp_path / "fleet-spool")
    d = make_daemon("--config", str(_serve_config(tmp_path, fleet_spool.root)),
                    root=tmp_path / "host-a")
    good = f'name = "twice"\n{upload_job(emulator, _image(tmp_path))}'
    bad = fleet_spool.submit(b'verb = "upload"\nendpoint_url = "http://127.0.0.1:1"\n',
                             "bad.toml")
    box, record = wait_for(lambda: _landed(fleet_spool, bad), 60, "the bad file to be refused")
    assert box == "failed" and record["error"] == "BadInput", record
    assert record["field"] == "path", record
    assert "path: required for verb 'upload'" in record["message"], record

    first = fleet_spool.submit(good.encode(), "twice.toml")
    assert wait_for(lambda: _landed(fleet_spool, first), 60, "the first drop")[0] == "done"
    wait_for(lambda: _fleet_item(fleet_cli, "twice").get("state") == "done", 120,
             "the job to finish")
    second = fleet_spool.submit(good.encode(), "twice.toml")
    box, record = wait_for(lambda: _landed(fleet_spool, second), 60, "the second drop")
    assert box == "failed" and record["error"] == "JobExists", record
    assert record["field"] == "job", record
    assert "job twice is already in the fleet's table fspd-jobs" in record["message"]
    item = _fleet_item(fleet_cli, "twice")
    assert (item["state"], item["attempt"]) == ("done", 1), item  # ran once
    assert [j["job"] for j in json.loads(
        fleet_cli("fspd status --fleet --json").stdout)["jobs"]] == ["twice"]
    assert '"fleet_spool_refused"' in d.log()


def test_an_enqueue_cut_short_by_a_crash_sends_its_message_on_restart(
        make_daemon: Callable[..., Daemon], emulator: EmulatorControl, fleet_cli: Runner,
        fleet_endpoints: str, tmp_path: Path) -> None:
    """A daemon died after writing the item, before sending the message: its file is in
    active/, unlocked. The next start sends the message rather than calling it a duplicate."""
    make_bucket(fleet_endpoints)
    assert fleet_cli("fspd fleet init").returncode == 0
    image = _image(tmp_path)
    text = f'name = "cut-short"\n{upload_job(emulator, image)}'
    fleet_spool = Spool(tmp_path / "fleet-spool")
    fleet_spool.ensure()
    (fleet_spool.box("active") / "cut.toml").write_text(text)

    async def put_item() -> None:
        async with open_services(Settings(), fleet_settings()) as svc:
            await JobTable(svc.dynamodb, "fspd-jobs").put_new("cut-short", text,
                                                              filename="cut.toml")

    asyncio.run(put_item())
    d = make_daemon("--config", str(_serve_config(tmp_path, fleet_spool.root)),
                    root=tmp_path / "host-a")
    box, record = wait_for(lambda: _landed(fleet_spool, "cut.toml"), 60, "the resumed file")
    assert (box, record["fleet_job"]) == ("done", "cut-short"), record
    item = wait_for(lambda: _fleet_item(fleet_cli, "cut-short").get("state") == "done"
                    and _fleet_item(fleet_cli, "cut-short"), 120, "the job to run")
    assert item["attempt"] == 1, item
    [snap] = d.api("/v1/jobs/cut-short")["snapshot_ids"].values()
    assert emulator.image(snap, length=image.stat().st_size) == image.read_bytes()


def test_files_wait_in_the_fleet_spool_until_the_fleet_exists(
        make_daemon: Callable[..., Daemon], emulator: EmulatorControl, fleet_cli: Runner,
        fleet_endpoints: str, tmp_path: Path) -> None:
    make_bucket(fleet_endpoints)  # but no `fspd fleet init` yet: no queue, no table
    fleet_spool = Spool(tmp_path / "fleet-spool")
    d = make_daemon("--config", str(_serve_config(tmp_path, fleet_spool.root)),
                    root=tmp_path / "host-a")
    name = fleet_spool.submit(f'name = "early"\n{upload_job(emulator, _image(tmp_path))}'
                              .encode(), "early.toml")
    wait_for(lambda: '"fleet_spool_unavailable"' in d.log(), 60, "the fleet error")
    assert fleet_spool.names("new") == [name]  # not claimed, not refused
    assert fleet_cli("fspd fleet init").returncode == 0
    box, record = wait_for(lambda: _landed(fleet_spool, name), 60, "the file to be enqueued")
    assert (box, record["fleet_job"]) == ("done", "early"), record
    wait_for(lambda: _fleet_item(fleet_cli, "early").get("state") == "done", 120,
             "the job to run")


def test_a_fleet_spool_that_is_the_local_spool_is_refused_naming_the_setting(
        fleet_endpoints: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    config = _serve_config(tmp_path, spool)
    result = subprocess.run(
        [sys.executable, "-m", "fspd", "serve", "--config", str(config), "--spool", str(spool),
         "--state-dir", str(tmp_path / "state"), "--socket", str(tmp_path / "s.sock")],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2, result.stderr
    assert "fleet.spool_dir" in result.stderr and "Traceback" not in result.stderr
    relative = write_config(tmp_path / "rel.toml", SERVE_FLEET.replace(
        "receive_wait_s = 1\n", 'receive_wait_s = 1\nspool_dir = "fleet-spool"\n'))
    result = subprocess.run(
        [sys.executable, "-m", "fspd", "serve", "--config", str(relative)],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2, result.stderr
    assert "fleet.spool_dir" in result.stderr and "not an absolute path" in result.stderr
