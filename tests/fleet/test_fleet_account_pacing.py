"""The per-account EBS Direct quota shared across a fleet's hosts: each host running fleet jobs
paces at ``transfer.per_account_rps`` / N (the host registry in the table, fspd/fleet/hosts.py).
Two real ``fspd serve`` hosts upload at once against the emulator's per-account limit; its
throttle counter says whether together they kept to the quota."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

from fspd.emulator.control import EmulatorControl
from fspd.fleet.hosts import REGISTRY_KEY, HostRegistry
from fspd.fleet.services import Services
from fspd.fleet.table import JobTable
from tests.cli.conftest import Runner
from tests.daemon import conftest as daemon_fixtures
from tests.daemon.conftest import Daemon, upload_job, wait_for, write_config
from tests.daemon.test_control_socket import _get
from tests.fleet.conftest import make_bucket
from tests.fleet.test_fleet_serve import SERVE_FLEET, _fleet_item

make_daemon = daemon_fixtures.make_daemon  # a real `fspd serve` per test

QUOTA = 20  # PutSnapshotBlock per second for the account, in the emulator and in fspd
BLOCKS = 40  # per host: 4 s at half the quota


async def test_the_registry_counts_the_hosts_running_jobs_and_drops_expired_ones(
        services: Services) -> None:
    registry = HostRegistry(services.dynamodb, "fspd-jobs")
    assert await registry.renew("host-a:1", 60, now=1000.0) == 1
    assert await registry.renew("host-b:2", 60, now=1001.0) == 2
    assert await registry.renew("host-a:1", 60, now=1030.0) == 2  # a renewal is no new host
    # host-b stopped renewing (died): past its lease it no longer counts, and is removed
    assert await registry.renew("host-a:1", 60, now=1070.0) == 1
    assert set(await registry.hosts(now=1070.0)) == {"host-a:1"}
    assert set(await registry.hosts(now=0.0)) == {"host-a:1"}  # gone, not only expired
    await registry.leave("host-a:1")
    await registry.leave("host-a:1")  # twice: nothing to remove, no error
    assert await registry.hosts(now=0.0) == {}
    table = JobTable(services.dynamodb, "fspd-jobs")
    assert await table.scan() == [] and await table.get(REGISTRY_KEY) is None  # not a job


def _share(d: Daemon) -> float | None:
    text = asyncio.run(_get(d.socket, "/metrics"))[1]
    line = next((x for x in text.splitlines()
                 if x.startswith("fspd_fleet_account_share{")), None)
    return None if line is None else float(line.rsplit(" ", 1)[1])


def _two_hosts_upload_at_once(make_daemon: Callable[..., Daemon], emulator: EmulatorControl,
                              fleet_cli: Runner, fleet_endpoints: str, tmp_path: Path,
                              *, share: bool) -> dict[str, int]:
    """Both hosts hold one upload each, the emulator answering no put, until both run (and,
    sharing, both count two hosts); then the puts go: the emulator's request counts."""
    make_bucket(fleet_endpoints)
    assert fleet_cli("fspd fleet init").returncode == 0
    emulator.config(account_put_rate=QUOTA)
    emulator.faults(hold_after=0, operations=["PutSnapshotBlock"])
    images = {}
    for name in ("pace-a", "pace-b"):
        images[name] = tmp_path / f"{name}.img"
        images[name].write_bytes(os.urandom(BLOCKS << 19))
        (tmp_path / f"{name}.toml").write_text(
            f'name = "{name}"\n{upload_job(emulator, images[name])}')
        assert fleet_cli(f"fspd submit --fleet {name}.toml").returncode == 0
    config = write_config(tmp_path / "serve.toml", SERVE_FLEET + f"""
share_account_rps = {"true" if share else "false"}
[daemon]
max_jobs = 1
[transfer]
per_account_rps = {QUOTA}
put_concurrency = 2
""")
    hosts = [make_daemon("--config", str(config), root=tmp_path / f"host-{h}") for h in "ab"]
    wait_for(lambda: all(_fleet_item(fleet_cli, n).get("owner") for n in images), 60,
             "both hosts to take a job")
    if share:
        wait_for(lambda: all(_share(d) == 0.5 for d in hosts), 60,
                 "both hosts to pace at half the quota")
    else:
        assert [_share(d) for d in hosts] == [1.0, 1.0]
    emulator.reset_stats()
    emulator.clear_faults()
    for name in images:
        wait_for(lambda n=name: _fleet_item(fleet_cli, n).get("state") == "done", 120,
                 f"{name} to finish")
    stats = emulator.stats()
    for d, name in zip(hosts, images, strict=True):
        [snap] = d.api(f"/v1/jobs/{name}")["snapshot_ids"].values()
        assert emulator.image(snap, length=BLOCKS << 19) == images[name].read_bytes()
    if share:  # each left the registry when its job ended: a lone host has all of it again
        wait_for(lambda: all(_share(d) == 1.0 for d in hosts), 60, "the shares to go back")
    return {"puts": stats["requests"].get("PutSnapshotBlock", 0),
            "throttled": stats["throttled"]}


def test_two_hosts_sharing_the_account_quota_are_not_throttled(
        make_daemon: Callable[..., Daemon], emulator: EmulatorControl, fleet_cli: Runner,
        fleet_endpoints: str, tmp_path: Path) -> None:
    counts = _two_hosts_upload_at_once(make_daemon, emulator, fleet_cli, fleet_endpoints,
                                       tmp_path, share=True)
    assert counts["puts"] >= 2 * BLOCKS - 4, counts  # (4 were held before the count began)
    assert counts["throttled"] <= 2, counts  # at most an edge of the emulator's bucket


def test_two_hosts_each_pacing_at_the_whole_quota_are_throttled(
        make_daemon: Callable[..., Daemon], emulator: EmulatorControl, fleet_cli: Runner,
        fleet_endpoints: str, tmp_path: Path) -> None:
    """The same run without sharing: what the test above would see if it were not shared."""
    counts = _two_hosts_upload_at_once(make_daemon, emulator, fleet_cli, fleet_endpoints,
                                       tmp_path, share=False)
    assert counts["throttled"] >= 6, counts  # measured: 13 (0 sharing)
