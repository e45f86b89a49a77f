"""A busy fleet host asks for its next job as soon as a slot frees, not at its next poll
(a real `fspd serve`, the emulator for EBS, moto for SQS, DynamoDB and S3)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fspd.emulator.control import EmulatorControl
from tests.cli.conftest import Runner
from tests.daemon import conftest as daemon_fixtures
from tests.daemon.conftest import Daemon, download_job, wait_for, write_config
from tests.fleet.conftest import make_bucket
from tests.fleet.test_fleet_serve import SERVE_FLEET

make_daemon = daemon_fixtures.make_daemon

POLL_S = 5.0  # the longest poll_interval_s: a host that polled would idle up to this long

SLOW_POLL_FLEET = f"""
[daemon]
poll_interval_s = {POLL_S}
{SERVE_FLEET}"""


def _done(d: Daemon, name: str) -> dict[str, Any] | None:
    record = d.api(f"/v1/jobs/{name}", missing_ok=True)
    return record if record and record["state"] == "completed" else None


def test_a_busy_host_takes_the_next_fleet_job_when_its_slot_frees_not_at_the_next_poll(
        make_daemon: Callable[..., Daemon], emulator: EmulatorControl, fleet_cli: Runner,
        fleet_endpoints: str, tmp_path: Path) -> None:
    make_bucket(fleet_endpoints)
    assert fleet_cli("fspd fleet init").returncode == 0
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.002, seed=7)
    for name in ("first", "second"):
        (tmp_path / f"{name}.toml").write_text(
            f'name = "{name}"\n' + download_job(emulator, snap, tmp_path / f"{name}.img"))
        assert fleet_cli(f"fspd submit --fleet {name}.toml").returncode == 0
    config = write_config(tmp_path / "serve.toml", SLOW_POLL_FLEET)
    d = make_daemon("--config", str(config), "--max-jobs", "1", "--workers", "1",
                    root=tmp_path / "host")
    first = wait_for(lambda: _done(d, "first"), 120, "the first job to finish")
    second = wait_for(lambda: _done(d, "second"), 120, "the second job to finish")
    # One slot: the second job starts after the first ends; with a poll it would wait for
    # the poll's next tick (up to POLL_S after the first job started)
    idle = second["started_at"] - first["finished_at"]
    assert 0 <= idle < POLL_S / 2, (first, second)
