"""The control socket and its CLI clients, against a real ``fspd serve``."""

from __future__ import annotations

import asyncio
import grp
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from fspd.daemon.access import Membership, Peer, Policy
from fspd.daemon.client import Client, DaemonUnavailable
from fspd.emulator.control import EmulatorControl
from tests.daemon.conftest import Daemon, download_job, wait_for, write_config

SLOW_CONFIG = """
[transfer]
fetch_concurrency = 1
[daemon]
event_interval_s = 0.1
"""
SLOW_LATENCY_MS = 100  # one GetSnapshotBlock in flight, each 100 ms: ~10 blocks/s


def _slow_job(daemon: Daemon, emulator: EmulatorControl, tmp_path: Path, name: str) -> str:
    """A download that runs for minutes unless the test speeds it up: 1024 blocks at ~10/s
    (emulator latency, set before the job is submitted; one block in flight)."""
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.5, seed=21)
    emulator.faults(latency_ms=SLOW_LATENCY_MS, operations=["GetSnapshotBlock"])
    return daemon.submit(download_job(emulator, snap, tmp_path / f"{name}.img"), f"{name}.toml")


def _state(daemon: Daemon, job: str) -> str:
    return daemon.job(job)["state"]


def _in_flight(daemon: Daemon, job: str) -> int:
    """Blocks in flight, as the job's worker last reported; -1 before its first report."""
    stages = daemon.job(job)["progress"]["stages"]
    return sum(stage["in_flight"] for stage in stages.values()) if stages else -1


@pytest.fixture
def slow_daemon(make_daemon, tmp_path: Path) -> Daemon:
    """One block in flight per job and frequent progress events; with ``_slow_job`` a job
    stays running until the test acts on it, however busy the machine."""
    config = tmp_path / "slow.toml"
    write_config(config, SLOW_CONFIG)
    return make_daemon("--config", str(config), "--bandwidth", "8M", "--rescan-interval", "1")


def test_status_pause_resume_cancel_and_bandwidth_through_the_cli(
        slow_daemon: Daemon, emulator: EmulatorControl, tmp_path: Path) -> None:
    d = slow_daemon
    # ~150 MiB at 8 MiB/s: still running when the test cancels it, however slow the machine.
    job = _slow_job(d, emulator, tmp_path, "slow")
    wait_for(lambda: _state(d, job) == "running", what="running")
    table = d.cli("status")
    assert table.returncode == 0 and job[:30] in table.stdout and "running" in table.stdout
    # A worker process runs the job: its stages reach the parent with its first progress.
    def staged() -> subprocess.CompletedProcess[str] | None:
        r = d.cli("status", job)
        return r if r.returncode != 0 or "stage fetch" in r.stdout else None

    detail = wait_for(staged, what="the job's stages")
    assert detail.returncode == 0 and "stage fetch" in detail.stdout, detail.stderr
    status = json.loads(d.cli("status", "--json").stdout)
    assert status["bandwidth_bytes_per_s"] == 8 << 20 and status["counts"] == {"running": 1}

    paused = d.cli("pause", job[:12])  # a unique prefix names the job
    assert paused.returncode == 0, paused.stderr
    assert _state(d, job) == "paused"
    wait_for(lambda: _in_flight(d, job) == 0, 10, "blocks in flight to finish")
    settled = d.job(job)["progress"]["blocks_done"]
    gets = emulator.stats()["requests"]["GetSnapshotBlock"]
    # "Nothing moves while paused", observed over a condition rather than a time: another
    # job runs to its end meanwhile (~10 blocks at the same latency), and every block read
    # in that time is its own.
    other_snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.005, seed=22)
    other = d.submit(download_job(emulator, other_snap, tmp_path / "other.img"), "other.toml")
    assert d.wait_finished(other) == "done"
    other_blocks = d.sidecar("done", other)["blocks_done"]
    assert other_blocks > 0
    assert d.job(job)["progress"]["blocks_done"] == settled  # no progress while paused
    assert emulator.stats()["requests"]["GetSnapshotBlock"] == gets + other_blocks  # nor reads
    assert d.job(job)["state"] == "paused"
    assert d.cli("resume", job).returncode == 0
    wait_for(lambda: d.job(job)["progress"]["blocks_done"] > settled, 10, "progress")

    bw = d.cli("bandwidth", "4MiB")
    assert bw.returncode == 0 and "4.0 MiB/s" in bw.stdout
    assert d.api("/v1/status")["bandwidth_bytes_per_s"] == 4 << 20

    cancelled = d.cli("cancel", job)
    assert cancelled.returncode == 0, cancelled.stderr
    assert d.wait_finished(job) == "failed"
    error = d.sidecar("failed", job)
    assert error["error"] == "Cancelled" and "cancelled" in error["message"]
    assert d.job(job)["state"] == "cancelled"
    again = d.cli("cancel", job)
    assert again.returncode == 2 and "already cancelled" in again.stderr


def test_watch_streams_ndjson_until_the_job_ends(
        slow_daemon: Daemon, emulator: EmulatorControl, tmp_path: Path) -> None:
    """The job is held paused until ``fspd watch`` has connected (its first line is the
    job's record), then let go at full speed: the stream sees it run and end."""
    d = slow_daemon
    d.cli("bandwidth", "40M")
    job = _slow_job(d, emulator, tmp_path, "watched")
    wait_for(lambda: _state(d, job) == "running", what="running")
    assert d.cli("pause", job).returncode == 0
    watch = subprocess.Popen([sys.executable, "-m", "fspd", "watch", job, "--socket", d.socket],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=d.env)
    try:
        assert watch.stdout is not None
        first = json.loads(watch.stdout.readline())
        assert first["job"] == job and first["state"] == "paused", first
        emulator.clear_faults()
        assert d.cli("resume", job).returncode == 0
        rest, err = watch.communicate(timeout=120)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert watch.returncode == 0, err
    events = [first, *(json.loads(line) for line in rest.splitlines())]
    assert all(e["job"] == job for e in events)
    assert events[-1]["state"] == "completed"
    progress = [e["blocks_done"] for e in events if e["event"] == "progress"]
    assert progress and progress == sorted(progress)
    assert d.wait_finished(job) == "done"
    # A finished job is still found once the daemon has forgotten it: from its result file.
    assert d.cli("watch", job).returncode == 0


def test_metrics_are_prometheus_text(daemon: Daemon, emulator: EmulatorControl,
                                     tmp_path: Path) -> None:
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.002, seed=2)
    job = daemon.submit(download_job(emulator, snap, tmp_path / "m.img"))
    daemon.wait_finished(job)
    text = asyncio.run(_get(daemon.socket, "/metrics"))[1]
    assert 'fspd_jobs{state="completed"} 1' in text
    assert 'fspd_jobs_finished_total{outcome="completed"} 1' in text
    assert "# TYPE fspd_bytes_total counter" in text
    bytes_line = next(x for x in text.splitlines() if x.startswith("fspd_bytes_total "))
    assert float(bytes_line.split()[1]) > 0


async def _get(sock: str, path: str, method: str = "GET", data: bytes | None = None
               ) -> tuple[int, str]:
    async with (aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock)) as s,
                s.request(method, "http://fspd" + path, data=data) as resp):
        return resp.status, await resp.text()


MALFORMED = [
    ("GET", "/v1/nothing", None, 404),
    ("GET", "/v1/jobs/no-such-job", None, 404),
    ("POST", "/v1/jobs/no-such-job/cancel", None, 404),
    ("POST", "/v1/jobs/no-such-job/explode", None, 404),
    ("PUT", "/v1/bandwidth", b"{not json", 400),
    ("PUT", "/v1/bandwidth", b'{"bytes_per_s": -5}', 400),
    ("PUT", "/v1/bandwidth", b'["list"]', 400),
    ("PUT", "/v1/bandwidth", b"x" * 70000, 413),
    ("DELETE", "/v1/status", None, 405),
]


def test_malformed_requests_get_json_4xx_and_the_daemon_carries_on(daemon: Daemon) -> None:
    for method, path, body, status in MALFORMED:
        got, text = asyncio.run(_get(daemon.socket, path, method, body))
        assert got == status, (method, path, text)
        assert "message" in json.loads(text)
    assert daemon.cli("status").returncode == 0


def test_clients_say_clearly_when_the_daemon_is_not_running(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "fspd", "status", "--socket",
                           str(tmp_path / "none.sock")], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 6
    assert "not running" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_control_policy_from_peer_credentials() -> None:
    users = {2000: ("someone", 50), 2001: ("ops", 2001), 2002: ("guest", 2002)}
    membership = Membership(50, members_of=lambda gid: frozenset({"ops"}),
                            user_of=users.get)
    policy = Policy(daemon_uid=1000, control_gid=50, control_group="fspdctl",
                    membership=membership)
    assert policy.may_control(Peer(pid=1, uid=0, gid=0))
    assert policy.may_control(Peer(pid=1, uid=1000, gid=1000))
    assert policy.may_control(Peer(pid=1, uid=2000, gid=2000))  # primary group
    assert policy.may_control(Peer(pid=1, uid=2001, gid=2001))  # supplementary
    assert not policy.may_control(Peer(pid=1, uid=2002, gid=50))  # gid alone: not listed
    assert not Policy(daemon_uid=1000).may_control(Peer(pid=1, uid=2000, gid=50))
    assert "fspdctl" in policy.explain()


def _curl_as(uid: int, gid: int, sock: str, method: str, path: str
             ) -> subprocess.CompletedProcess[str]:
    """curl (reachable by any uid, unlike the test's Python) as another user."""
    return subprocess.run(
        [CURL, "-sS", "--unix-socket", sock, "-X", method, "-w", "\\n%{http_code}",
         f"http://fspd{path}"], capture_output=True, text=True, timeout=30, user=uid,
        group=gid, extra_groups=[])


CURL = shutil.which("curl")


@pytest.mark.skipif(os.geteuid() != 0 or CURL is None, reason="needs root (to switch uid) "
                    "and curl")
def test_a_peer_outside_the_control_group_may_read_but_not_control(
        make_daemon, emulator: EmulatorControl, tmp_path: Path) -> None:
    nogroup = grp.getgrgid(65534).gr_name
    d: Daemon = make_daemon("--socket-group", nogroup, "--bandwidth", "8M")
    assert os.stat(d.socket).st_mode & 0o777 == 0o660
    assert os.stat(d.socket).st_gid == 65534
    job = _slow_job(d, emulator, tmp_path, "guarded")
    wait_for(lambda: _state(d, job) == "running", what="running")

    read = _curl_as(65534, 65534, d.socket, "GET", "/v1/status")
    body, code = read.stdout.rsplit("\n", 1)
    assert code == "200", read
    assert json.loads(body)["you"] == {"uid": 65534, "gid": 65534, "control": False}
    refused = _curl_as(65534, 65534, d.socket, "POST", f"/v1/jobs/{job}/cancel")
    body, code = refused.stdout.rsplit("\n", 1)
    assert code == "403"
    assert "may only read" in json.loads(body)["message"]
    assert _state(d, job) == "running"
    outsider = _curl_as(65534, 65533, d.socket, "GET", "/v1/status")  # not in the group
    assert outsider.returncode == 7 and outsider.stdout.endswith("000")  # cannot connect
    assert d.cli("cancel", job).returncode == 0  # root may


async def test_a_refused_connection_reads_as_permission_denied(tmp_path: Path) -> None:
    import socket as socketlib

    sock_path = tmp_path / "s.sock"
    listener = socketlib.socket(socketlib.AF_UNIX)
    listener.bind(str(sock_path))
    listener.close()  # a socket file nobody listens on
    with pytest.raises(DaemonUnavailable, match="not running"):
        async with Client(str(sock_path)) as client:
            await client.call("GET", "/v1/status")
    key = aiohttp.client_reqrep.ConnectionKey("fspd", 80, False, True, None, None, None)
    error = aiohttp.ClientConnectorError(key, PermissionError(13, "Permission denied"))
    message = str(Client(str(sock_path))._unavailable(error))
    assert "permission denied" in message and "socket_group" in message
