"""``GET /v1/fleet`` on a real daemon's control socket: every fleet job across hosts as
``fspd status --fleet --json`` lists it; 404 when the daemon is not in a fleet, 503 when the
fleet's table cannot be read, each a JSON error naming the field."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fspd.emulator.control import EmulatorControl
from tests.cli.conftest import Runner
from tests.daemon import conftest as daemon_fixtures
from tests.daemon.conftest import Daemon, upload_job, wait_for, write_config
from tests.daemon.test_control_socket import _get
from tests.fleet.conftest import make_bucket
from tests.fleet.test_fleet_serve import SERVE_FLEET, _fleet_item

make_daemon = daemon_fixtures.make_daemon  # a real `fspd serve` per test

ONE_AT_A_TIME = SERVE_FLEET + """
[daemon]
max_jobs = 1
[transfer]
put_concurrency = 2
"""


def _view(d: Daemon, query: str = "") -> tuple[int, dict[str, Any]]:
    status, body = asyncio.run(_get(d.socket, "/v1/fleet" + query))
    return status, json.loads(body)


def _rows(listed: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    return {j["job"]: (j["state"], j.get("owner"), j["attempt"], j.get("reason"))
            for j in listed["jobs"]}


def test_the_socket_lists_every_fleet_job_as_status_fleet_does(
        make_daemon: Callable[..., Daemon], emulator: EmulatorControl, fleet_cli: Runner,
        fleet_endpoints: str, tmp_path: Path) -> None:
    make_bucket(fleet_endpoints)
    assert fleet_cli("fspd fleet init").returncode == 0
    image = tmp_path / "in.img"
    image.write_bytes(os.urandom(8 << 20))  # 16 blocks; the emulator answers 4, then holds
    emulator.faults(hold_after=4, operations=["PutSnapshotBlock"])
    for name in ("view-a", "view-b"):
        (tmp_path / f"{name}.toml").write_text(f'name = "{name}"\n{upload_job(emulator, image)}')
    assert fleet_cli("fspd submit --fleet view-a.toml").returncode == 0
    config = write_config(tmp_path / "serve.toml", ONE_AT_A_TIME)
    d = make_daemon("--config", str(config), root=tmp_path / "host-a")
    # view-a runs (held mid-way, its heartbeat carrying progress); view-b waits: one slot
    wait_for(lambda: (_fleet_item(fleet_cli, "view-a").get("progress") or {}).get("bytes_done"),
             60, "view-a's progress in the table")
    assert fleet_cli("fspd submit --fleet view-b.toml").returncode == 0
    try:
        status, listed = _view(d)
        assert status == 200, listed
        cli = json.loads(fleet_cli("fspd status --fleet --json").stdout)
        assert listed["table"] == cli["table"] == "fspd-jobs"
        assert _rows(listed) == _rows(cli)
        assert listed["host"] == _rows(listed)["view-a"][1]  # this daemon holds view-a
        a, b = ({j["job"]: j for j in listed["jobs"]}[n] for n in ("view-a", "view-b"))
        assert (a["state"], a["attempt"], b["state"], b["attempt"]) == (
            "running", 1, "queued", 0)
        assert a["progress"]["bytes_done"] > 0 and a["lease_until"] > 0, a
        assert set(a["progress"]) >= {"bytes_done", "percent", "eta_s", "rate_recent_bps"}
        assert "spec" not in a and "spec" not in b  # the job files' text is not listed
        status, one = _view(d, "?job=view-b")
        assert status == 200 and [j["job"] for j in one["jobs"]] == ["view-b"], one
        status, none = _view(d, "?job=nope")
        assert status == 404 and (none["error"], none["field"]) == ("NotFound", "job"), none
        assert "no fleet job 'nope' in table fspd-jobs" in none["message"]
    finally:
        emulator.clear_faults()
    for name in ("view-a", "view-b"):
        wait_for(lambda n=name: _fleet_item(fleet_cli, n).get("state") == "done", 120,
                 f"{name} to finish")
    status, listed = _view(d)
    assert status == 200
    assert _rows(listed) == {"view-a": ("done", None, 1, ""), "view-b": ("done", None, 1, "")}


def test_a_daemon_not_in_a_fleet_answers_404_naming_the_section(
        make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    d = make_daemon()
    status, body = _view(d)
    assert status == 404, body
    assert (body["error"], body["field"]) == ("NotInFleet", "fleet"), body
    assert "not in a fleet: its settings have no [fleet] section" in body["message"]
    assert d.api("/v1/status")["pid"]  # and it carries on


def test_a_fleet_table_that_cannot_be_read_answers_503_and_the_daemon_carries_on(
        make_daemon: Callable[..., Daemon], fleet_cli: Runner, fleet_endpoints: str,
        tmp_path: Path) -> None:
    make_bucket(fleet_endpoints)  # no `fspd fleet init`: no table yet
    config = write_config(tmp_path / "serve.toml", SERVE_FLEET)
    d = make_daemon("--config", str(config), root=tmp_path / "host-a")
    status, body = _view(d)
    assert status == 503, body
    assert (body["error"], body["field"]) == ("FleetUnavailable", "fleet.table"), body
    assert body["message"].startswith("cannot read the fleet's table fspd-jobs: "), body
    assert "Traceback" not in d.log()
    assert fleet_cli("fspd fleet init").returncode == 0
    status, body = _view(d)  # a new client once the table exists
    assert status == 200 and body["jobs"] == [], body
